"""The fold: the audit log (``bus_events``) added into the counters (``metric_totals``), exactly once.

Every state change writes a ``bus_events`` row, and the rows that tell an outcome carry what a counter needs
(written where they are written, so the fold needs no pairing and no join):

- a worker's attempt: ``route``, ``model`` on each row; the row that closes the attempt (``execute_done``,
  ``execute_retry``, the final ``execute_failed``) ``end`` (done, retry, failed, held: kept as a dead letter),
  ``wait_s`` (dispatched → claimed) and ``run_s`` (claimed → outcome) (``workers/runtime.py``);
- the reclaimer's lost attempt: ``lease_expired`` with ``end: retry``, or ``execute_dead`` with ``end: dead`` (or
  ``held``);
- a held dead letter has not ended (its run waits for it): its ``dead_letter_held`` row counts a dead letter; an
  operator's discard ends it (``dead_letter_discarded`` with ``end: dead``), a re-queue starts new attempts that
  end as any do (``coordinator/dead_letters.py``);
- the dispatcher's denial (``policy_denied``, ``budget_violation``): ``end: denied`` and ``code``;
- the brain's ``event_applied`` per decide row it applied: ``event``, ``latency_s`` (due → applied), ``root`` on a
  root run's ``start`` (the ingress latency: a child run is started by its parent's step, not by the API) and the
  usage its step settled per model (``coordinator/brain.py``); an operator's re-queue of a dead letter settles on
  its ``dead_letter_requeued`` row (``settled``). So the token and cost counters equal what the ledger settles.

One fold reads the rows after the cursor (``metric_cursor``, ``bus/cursor.py``: ids may commit out of order) in
bounded batches and adds them, with the cursor, in one transaction that holds the cursor's row locked: a crash
folds nothing twice and loses nothing, and two folders (the metrics server's thread, the retention loop before it
prunes) take turns. The counters are never pruned, so they never go down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bus.cursor import Position, read
from bus.ledger import DEFAULT_MODEL
from bus.schema import bus_events as be
from bus.schema import metric_cursor as mc
from bus.schema import metric_totals as mt
from coordinator.metrics import families as f
from coordinator.metrics.families import Family, label_text, le_text

BATCH = 5000
"""Audit rows one fold transaction reads at most."""
SETTLE_S = 60.0
"""A hole in the ids below a row the fold read this long ago (by the folder's clock) is taken for an id that will
never commit (``bus/cursor.py``)."""
CURSOR_ID = 1
ENDS = {"done": "done", "failed": "failed", "dead": "dead", "denied": "failed"}
"""An ``end`` that ends an assignment → its ``outcome`` label (``retry`` and ``held`` end an attempt only)."""

_ROWS = select(be.c.id, be.c.kind, be.c.tenant, be.c.attempt, be.c.detail, be.c.created_at)
_IDS = select(be.c.id)

Sample = tuple[str, str]
"""``(sample name, label text)``: a row of ``metric_totals``."""


@dataclass(frozen=True)
class Folded:
    """What one fold transaction did: how many audit rows it read, and where the cursor is now."""

    rows: int
    position: Position


def fold(engine: Engine, *, clock: Callable[[], float] = time.time, max_batches: int = 1000) -> int:
    """Fold until caught up (or ``max_batches`` transactions); returns how many audit rows were folded."""
    total = 0
    for _ in range(max_batches):
        with engine.begin() as conn:
            done = fold_once(conn, now=clock())
        total += done.rows
        if done.rows < BATCH:
            break
    return total


def fold_once(conn: Connection, *, now: float) -> Folded:
    """Fold one batch in the caller's transaction, the cursor's row locked until it ends."""
    cursor = conn.execute(select(mc).where(mc.c.id == CURSOR_ID).with_for_update()).first()
    at = Position.stored(cursor.low_id, cursor.seen, cursor.marks) if cursor is not None else Position()
    got = read(conn, at, rows=_ROWS, ids=_IDS, id_column=be.c.id, created_column=be.c.created_at, now=now,
               settle_s=SETTLE_S, limit=BATCH)
    if not got.moved:
        return Folded(0, at)
    add(conn, totals(got.rows))
    values = {**got.position.columns(), "updated_at": now}
    if cursor is None:
        conn.execute(insert(mc).values(id=CURSOR_ID, **values))
    else:
        conn.execute(update(mc).where(mc.c.id == CURSOR_ID).values(**values))
    return Folded(len(got.rows), got.position)


def folded_below(conn: Connection) -> int:
    """The id up to which every audit row has been folded (the cursor's ``low_id``)."""
    return int(conn.execute(select(mc.c.low_id).where(mc.c.id == CURSOR_ID)).scalar() or 0)


def behind(conn: Connection, run_ids: list[str]) -> list[int]:
    """Audit rows of ``run_ids`` the fold has not read yet (retention must not delete them)."""
    cursor = conn.execute(select(mc.c.low_id, mc.c.seen).where(mc.c.id == CURSOR_ID)).first()
    low, seen = (cursor.low_id, set(cursor.seen or ())) if cursor is not None else (0, set())
    ids = conn.execute(select(be.c.id).where(be.c.run_id.in_(run_ids), be.c.id > low)).scalars()
    return [i for i in ids if i not in seen]


def add(conn: Connection, deltas: Mapping[Sample, float]) -> None:
    """Add ``deltas`` to ``metric_totals`` in one statement (an upsert: a new sample starts at its delta)."""
    if not deltas:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(mt).values([{"name": n, "labels": labels, "value": v}
                                      for (n, labels), v in sorted(deltas.items())])
    conn.execute(stmt.on_conflict_do_update(index_elements=[mt.c.name, mt.c.labels],
                                            set_={"value": mt.c.value + stmt.excluded.value}))


def totals(rows: list[Any]) -> dict[Sample, float]:
    """What ``rows`` add to every sample."""
    deltas: dict[Sample, float] = {}
    for row in rows:
        for family, labels, value in observe(row):
            if family.type == "histogram":
                _observe_histogram(deltas, family, labels, value)
            else:
                key = (family.sample, label_text(labels))
                deltas[key] = deltas.get(key, 0.0) + value
    return deltas


def _observe_histogram(deltas: dict[Sample, float], family: Family, labels: dict[str, str], value: float) -> None:
    for bound in (*family.buckets, float("inf")):
        if value <= bound:
            key = (f"{family.name}_bucket", label_text({**labels, "le": le_text(bound)}))
            deltas[key] = deltas.get(key, 0.0) + 1
    for suffix, amount in (("_sum", value), ("_count", 1.0)):
        key = (family.name + suffix, label_text(labels))
        deltas[key] = deltas.get(key, 0.0) + amount


def observe(row: Any) -> Iterator[tuple[Family, dict[str, str], float]]:
    """What one audit row tells each family: ``(family, labels, value)`` — a counter's increment or a histogram's
    observation."""
    detail = row.detail if isinstance(row.detail, dict) else {}
    yield f.BUS_EVENTS, {"kind": row.kind}, 1.0
    route, end = detail.get("route"), detail.get("end")
    if isinstance(route, str) and isinstance(end, str):
        yield from _ended(row, detail, route, end)
    if row.kind == "dead_letter_held" and isinstance(route, str):
        yield f.DEAD_LETTERS, {"route": route}, 1.0
    if row.kind == "budget_violation":
        yield f.BUDGET_VIOLATIONS, {"tenant": row.tenant}, 1.0
    if row.kind == "event_applied":
        yield from _applied(row, detail)
    if row.kind == "dead_letter_requeued" and isinstance(detail.get("settled"), dict):
        spent = detail["settled"]
        yield from _usage(row.tenant, spent.get("model") or DEFAULT_MODEL, spent.get("tokens"), spent.get("cost_usd"))


def _ended(row: Any, detail: dict[str, Any], route: str, end: str) -> Iterator[tuple[Family, dict[str, str], float]]:
    """An attempt that ended (``retry``) or an assignment that ended (``ENDS``), with its times when known."""
    if end == "retry":
        yield f.RETRIES, {"route": route}, 1.0
    elif end in ENDS:
        yield f.ASSIGNMENTS, {"route": route, "outcome": ENDS[end]}, 1.0
        if end == "done" and row.attempt == 1:
            yield f.FIRST_ATTEMPT_DONE, {"route": route}, 1.0
        if end == "denied":
            yield f.ADMISSION_DENIALS, {"code": str(detail.get("code") or "unknown")}, 1.0
    for family, key in ((f.QUEUE_WAIT, "wait_s"), (f.ASSIGNMENT_DURATION, "run_s")):
        seconds = _amount(detail.get(key))
        if seconds is not None:
            yield family, {"route": route}, seconds


def _applied(row: Any, detail: dict[str, Any]) -> Iterator[tuple[Family, dict[str, str], float]]:
    event, latency = str(detail.get("event") or "unknown"), _amount(detail.get("latency_s"))
    if latency is not None:
        yield f.STEP_LATENCY, {"event": event}, latency
        if event == "start" and detail.get("root") is True:  # a child run's start is its parent's step
            yield f.INGRESS_LATENCY, {}, latency
    for entry in detail.get("settled") or ():
        if isinstance(entry, list) and len(entry) == 3:
            yield from _usage(row.tenant, entry[0], entry[1], entry[2])


def _usage(tenant: str, model: Any, tokens: Any, cost: Any) -> Iterator[tuple[Family, dict[str, str], float]]:
    labels = {"tenant": tenant, "model": str(model)}
    for family, amount in ((f.TOKENS, tokens), (f.COST, cost)):
        value = _amount(amount)
        if value is not None:
            yield family, labels, value


def _amount(value: Any) -> float | None:
    """A finite, non-negative number from an audit row's detail, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if 0.0 <= number < float("inf") else None
