"""Circuit breakers per (service, role, model): stop sending work into a worker or model that keeps failing.

A circuit is ``closed`` (work flows), ``open`` (work is deferred, not sent) or ``half_open`` (one probe is out):

- closed → open after ``circuit_failures`` consecutive failed attempts, or when more than ``circuit_failure_rate``
  of the attempts of a ``circuit_window_s`` window failed, once the window holds ``circuit_min_calls`` attempts;
- open → half_open once its cool-down passed (``circuit_cooldown_s``, doubled at each re-open up to
  ``circuit_cooldown_max_s``) and one assignment is admitted as its probe (``claim_probe``: one conditional
  UPDATE, so of two dispatchers racing exactly one wins);
- half_open → closed when the probe succeeds, → open again (the cool-down doubled) when it fails; a probe that
  never ran (another policy deferred it, or it ended with no verdict) hands the circuit back to ``open``, due.

The machine is pure (``observe``, ``claim``, ``release``): a row and an outcome in, a row and maybe a ``Change``
out. ``sweep`` feeds it the attempts' outcomes from ``bus_events`` (the reclaimer calls it once per pass): what
the worker runtime writes per attempt (``execute_done``, ``execute_failed``, ``ttl_expired``) and the reclaimer
per lost attempt (``lease_expired``). Failures that are not the worker's or the model's fault are no verdict
(``NOT_THEIR_FAULT``: budget violations, abandoned attempts, unroutable or malformed assignments); the
dispatcher's denials never reach a worker and are not read at all. Every change of state is a ``bus_events`` row
(``circuit_open``, ``circuit_half_open``, ``circuit_closed``) and an introspection event on the runs it affected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from bus import ledger
from bus.cursor import Position, Read
from bus.cursor import read as cursor_read
from bus.introspection import IntrospectionEvent, write
from bus.schema import agent_messages as m
from bus.schema import bus_events as be
from bus.schema import circuit_cursor as cc
from bus.schema import circuits as ct
from bus.settings import Settings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
BUS_KINDS = {OPEN: "circuit_open", HALF_OPEN: "circuit_half_open", CLOSED: "circuit_closed"}
TRACE_TYPES = {OPEN: "dispatch.circuit.opened", HALF_OPEN: "dispatch.circuit.half_open",
               CLOSED: "dispatch.circuit.closed"}
OUTCOME_KINDS = ("execute_done", "execute_failed", "ttl_expired", "lease_expired")
"""The ``bus_events`` kinds that tell an attempt's outcome, one per attempt: a final TTL failure also writes
``execute_failed`` with code ``ttl.expired`` (skipped: its ``ttl_expired`` counts), a lost lease that ends the
assignment also ``execute_dead`` (not read: its ``lease_expired`` counts)."""
NOT_THEIR_FAULT = ("budget.", "execute.abandoned", "work.unroutable", "policy.", "contract.")
"""Failure codes (or prefixes) that say nothing about the worker or the model: no verdict."""
SETTLE_S = 30.0
"""Ids of ``bus_events`` may commit out of order on PostgreSQL; every id below one the sweep read this long ago
(by its own clock) is taken to be committed: the sweep reads again everything above the highest such id, skipping
the ids it already applied (``circuit_cursor.seen``, ``marks``; ``bus/cursor.py``)."""
FIRST_LOOK_S = 600.0
"""How far back the first sweep on a ledger looks."""
BATCH = 2000
RUNS_SHOWN = 50
CURSOR_ID = 1


@dataclass(frozen=True)
class Thresholds:
    """When a circuit opens and how long it stays open (from ``COGO_CIRCUIT_*``)."""

    failures: int = 5
    failure_rate: float = 0.5
    min_calls: int = 20
    window_s: float = 60.0
    cooldown_s: float = 30.0
    cooldown_max_s: float = 600.0

    @classmethod
    def of(cls, settings: Settings) -> Thresholds:
        """The thresholds the settings name."""
        return cls(settings.circuit_failures, settings.circuit_failure_rate, settings.circuit_min_calls,
                   settings.circuit_window_s, settings.circuit_cooldown_s, settings.circuit_cooldown_max_s)

    def cooldown(self, open_count: int) -> float:
        """The cool-down of the ``open_count``-th opening since the circuit was last closed (1: the first)."""
        return min(self.cooldown_s * 2 ** max(0, open_count - 1), self.cooldown_max_s)


Key = tuple[str, str, str]
"""(service, role, model)."""


@dataclass(frozen=True)
class Circuit:
    """One circuit's row."""

    service: str
    role: str
    model: str
    state: str = CLOSED
    consecutive_failures: int = 0
    window_started_at: float | None = None
    window_total: int = 0
    window_failures: int = 0
    opened_at: float | None = None
    retry_at: float | None = None
    open_count: int = 0
    probe_id: str | None = None
    reason: str | None = None
    updated_at: float = 0.0

    @property
    def key(self) -> Key:
        return self.service, self.role, self.model

    @property
    def name(self) -> str:
        """How people name it: ``codegen.generate / model gpt-x``."""
        return f"{self.service}.{self.role} / model {self.model}"

    @classmethod
    def of(cls, row: Any) -> Circuit:
        """From a ``circuits`` row (or a mapping of its columns)."""
        values = row._mapping if hasattr(row, "_mapping") else row
        return cls(**{k: values[k] for k in _COLUMNS})

    def values(self) -> dict[str, Any]:
        """The row's columns."""
        return {k: getattr(self, k) for k in _COLUMNS}


_COLUMNS = tuple(c.name for c in ct.columns)


@dataclass(frozen=True)
class Outcome:
    """One attempt's outcome: ``ok`` True (succeeded), False (failed), None (no verdict on the worker)."""

    message_id: str
    ok: bool | None
    at: float
    run_id: str | None = None
    tenant: str = ""
    code: str = ""


@dataclass(frozen=True)
class Change:
    """A change of a circuit's state, and the message and runs it is told on."""

    circuit: Circuit
    before: str
    why: str
    message_id: str
    tenant: str
    runs: tuple[str, ...] = ()

    def audit(self) -> dict[str, Any]:
        """Its ``bus_events`` row (without ``created_at``)."""
        c = self.circuit
        return {"message_id": self.message_id, "run_id": self.runs[0] if self.runs else None, "tenant": self.tenant,
                "kind": BUS_KINDS[c.state], "detail": {**self.data(), "runs": list(self.runs)}}

    def data(self) -> dict[str, Any]:
        """What the audit row and the trace events say."""
        c = self.circuit
        return {"service": c.service, "role": c.role, "model": c.model, "from": self.before, "to": c.state,
                "why": self.why, "consecutive_failures": c.consecutive_failures, "window_total": c.window_total,
                "window_failures": c.window_failures, "open_count": c.open_count, "retry_at": c.retry_at,
                "probe_id": c.probe_id}

    def traces(self) -> list[IntrospectionEvent]:
        """An introspection event on each run it affected."""
        return [IntrospectionEvent(TRACE_TYPES[self.circuit.state], run_id, self.data()) for run_id in self.runs]


# -- the machine: pure --------------------------------------------------------------------------------------

def observe(c: Circuit, o: Outcome, t: Thresholds, *, runs: Sequence[str] = ()) -> tuple[Circuit, Change | None]:
    """The circuit after one attempt's outcome (``runs``: the runs of the failures that led here, for a Change)."""
    if c.state == HALF_OPEN and o.message_id == c.probe_id:
        if o.ok is True:
            return _closed(c, o), Change(_closed(c, o), HALF_OPEN, f"its probe {o.message_id} succeeded",
                                         o.message_id, o.tenant, _runs([o.run_id]))
        if o.ok is False:
            opened = _open(c, o.at, c.open_count + 1, f"its probe {o.message_id} failed ({o.code})", t)
            return opened, Change(opened, HALF_OPEN, opened.reason or "", o.message_id, o.tenant, _runs([o.run_id]))
        return release(c, o.at, f"its probe {o.message_id} ended with no verdict ({o.code})", o.tenant)
    if c.state != CLOSED or o.ok is None:
        return c, None  # an attempt admitted before the circuit opened, or one that says nothing of the worker
    if c.window_started_at is None or o.at >= c.window_started_at + t.window_s:
        c = replace(c, window_started_at=o.at, window_total=0, window_failures=0)
    c = replace(c, window_total=c.window_total + 1, window_failures=c.window_failures + (not o.ok),
                consecutive_failures=0 if o.ok else c.consecutive_failures + 1, updated_at=o.at)
    why = _trips(c, t)
    if why is None:
        return c, None
    opened = _open(c, o.at, 1, why, t)
    return opened, Change(opened, CLOSED, why, o.message_id, o.tenant, _runs([*runs, o.run_id]))


def _trips(c: Circuit, t: Thresholds) -> str | None:
    """Why a closed circuit opens now, or None."""
    if c.consecutive_failures >= t.failures:
        return f"{c.consecutive_failures} consecutive failures"
    if c.window_total >= t.min_calls and c.window_failures > t.failure_rate * c.window_total:
        return f"{c.window_failures} of {c.window_total} attempts failed within {t.window_s:g} s"
    return None


def _open(c: Circuit, now: float, open_count: int, why: str, t: Thresholds) -> Circuit:
    return replace(c, state=OPEN, opened_at=now, retry_at=now + t.cooldown(open_count), open_count=open_count,
                   probe_id=None, reason=why, updated_at=now)


def _closed(c: Circuit, o: Outcome) -> Circuit:
    return replace(c, state=CLOSED, consecutive_failures=0, window_started_at=o.at, window_total=1,
                   window_failures=0, opened_at=None, retry_at=None, open_count=0, probe_id=None, reason=None,
                   updated_at=o.at)


def claim(c: Circuit, assignment_id: str, now: float, *, tenant: str = "",
          run_id: str | None = None) -> tuple[Circuit, Change] | None:
    """``open → half_open`` with ``assignment_id`` as the probe, when the cool-down is over; None otherwise."""
    if c.state != OPEN or c.retry_at is None or now < c.retry_at:
        return None
    probing = replace(c, state=HALF_OPEN, probe_id=assignment_id, updated_at=now)
    return probing, Change(probing, OPEN, f"its cool-down is over; {assignment_id} is its probe", assignment_id,
                           tenant, _runs([run_id]))


def release(c: Circuit, now: float, why: str, tenant: str = "") -> tuple[Circuit, Change | None]:
    """``half_open → open``, due at once, the cool-down unchanged: its probe never gave a verdict."""
    if c.state != HALF_OPEN:
        return c, None
    back = replace(c, state=OPEN, retry_at=min(c.retry_at or now, now), probe_id=None, updated_at=now)
    return back, Change(back, HALF_OPEN, why, c.probe_id or "", tenant)


def _runs(run_ids: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r for r in run_ids if r))[-RUNS_SHOWN:]


def apply(c: Circuit, outcomes: Sequence[Outcome], t: Thresholds) -> tuple[Circuit, list[Change]]:
    """Feed a circuit its outcomes in order; returns the circuit after them and every change of state."""
    changes: list[Change] = []
    failing: list[str] = []  # the runs of the failures since the last success, told when the circuit opens
    for o in outcomes:
        if o.ok is True:
            failing = []
        elif o.ok is False and o.run_id:
            failing.append(o.run_id)
        c, change = observe(c, o, t, runs=failing)
        if change is not None:
            changes.append(change)
            failing = []
    return c, changes


def verdict(kind: str, detail: Mapping[str, Any] | None) -> tuple[bool | None, str] | None:
    """What a ``bus_events`` row says of the worker: ``(ok, code)``, ``ok`` None for no verdict; None when the
    row is not an attempt's outcome (or repeats one already told by another row)."""
    code = str((detail or {}).get("code") or "")
    if kind == "execute_done":
        return True, ""
    if kind == "execute_failed" and code.startswith("ttl."):
        return None  # its ttl_expired row told it
    if kind in ("execute_failed", "ttl_expired", "lease_expired"):
        return (None if code.startswith(NOT_THEIR_FAULT) else False), code or kind
    return None


# -- the sweep: outcomes from the ledger into the circuits ------------------------------------------------

@dataclass
class CircuitSweep:
    """What one sweep did."""

    read: int = 0
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class _Read:
    position: Read
    outcomes: dict[Key, list[tuple[int, Outcome]]]
    stale_probes: dict[Key, str]


_OUTCOMES = (select(be.c.id, be.c.message_id, be.c.run_id, be.c.tenant, be.c.kind, be.c.detail, be.c.created_at,
                    m.c.service, m.c.role, ledger.MODEL.label("model"))
             .select_from(be.join(m, m.c.id == be.c.message_id))
             .where(be.c.kind.in_(OUTCOME_KINDS), m.c.kind == "assignment"))
_OUTCOME_IDS = select(be.c.id).where(be.c.kind.in_(OUTCOME_KINDS))


def sweep(engine: Engine, *, now: float, settings: Settings) -> CircuitSweep:
    """Apply the attempts' outcomes recorded since the last sweep to the circuits; write every change of state.

    Reads with no write lock held (on PostgreSQL), then applies in one short transaction that locks the cursor
    and the circuits it changes, so a dispatcher's probe claim is never overwritten.
    """
    with engine.connect() as conn:
        read = _read(conn, now)
    result = CircuitSweep(read=sum(len(v) for v in read.outcomes.values()))
    if not read.outcomes and not read.stale_probes and not read.position.moved:
        return result
    t = Thresholds.of(settings)
    with engine.begin() as conn:
        cursor = conn.execute(select(cc).where(cc.c.id == CURSOR_ID).with_for_update()).first()
        if _position(cursor) != read.position.before:
            return result  # another sweeper applied these meanwhile
        keys = sorted(set(read.outcomes) | set(read.stale_probes))
        stored = _lock(conn, keys)
        for key in keys:
            before = stored.get(key) or Circuit(*key, updated_at=now)
            after, changes = apply(before, [o for _, o in sorted(read.outcomes.get(key, []))], t)
            probe = read.stale_probes.get(key)
            if (probe is not None and after.state == HALF_OPEN and after.probe_id == probe
                    and _still_stale(conn, after, now)):
                after, change = release(after, now, f"its probe {probe} was not run")
                changes += [change] if change else []
            if after != before:
                _store(conn, after, exists=key in stored)
            result.changes += changes
        record(conn, result.changes, now=now)
        _store_cursor(conn, cursor is not None, read.position.position, now)
    return result


def _position(cursor: Any) -> Position | None:
    return Position.stored(cursor.low_id, cursor.seen, cursor.marks) if cursor is not None else None


def _read(conn: Connection, now: float) -> _Read:
    """The outcomes not applied yet, and where the cursor goes once they are (``bus/cursor.py``)."""
    cursor = conn.execute(select(cc).where(cc.c.id == CURSOR_ID)).first()
    # The first sweep ever reads the last window's worth of history, not the whole ledger.
    got = cursor_read(conn, _position(cursor), rows=_OUTCOMES, ids=_OUTCOME_IDS, id_column=be.c.id,
                      created_column=be.c.created_at, now=now, settle_s=SETTLE_S, limit=BATCH,
                      first_look_s=FIRST_LOOK_S)
    outcomes: dict[Key, list[tuple[int, Outcome]]] = {}
    for row in got.rows:
        said = verdict(row.kind, row.detail if isinstance(row.detail, dict) else None)
        if said is not None:
            key = (row.service, row.role, str(row.model)[:128])
            outcomes.setdefault(key, []).append(
                (row.id, Outcome(row.message_id, said[0], row.created_at, row.run_id, row.tenant, said[1])))
    return _Read(got, outcomes, _stale_probes(conn, now))


def _stale_probes(conn: Connection, now: float) -> dict[Key, str]:
    """Half-open circuits whose probe is not running and will not report: it was never sent (another policy
    deferred it after this one admitted it), it is gone, or it ended long ago without a verdict. Read with no
    lock: ``_still_stale`` checks each again before the sweep releases its circuit."""
    rows = conn.execute(select(ct.c.service, ct.c.role, ct.c.model, ct.c.probe_id, ct.c.updated_at, m.c.status)
                        .select_from(ct.outerjoin(m, m.c.id == ct.c.probe_id)).where(ct.c.state == HALF_OPEN))
    return {(r.service, r.role, r.model): r.probe_id for r in rows if _stale(r.status, r.updated_at, now)}


def _stale(status: str | None, half_open_since: float, now: float) -> bool:
    """Whether a probe in ``status`` (None: its row is gone) will never give its circuit a verdict."""
    never_sent = status is None or status in (ledger.QUEUED, ledger.RETRY_WAIT)
    ended_silently = status in (*ledger.FINAL, ledger.SETTLED) and half_open_since < now - SETTLE_S
    return never_sent or ended_silently


def _still_stale(conn: Connection, c: Circuit, now: float) -> bool:
    """``_stale`` again for the probe of locked circuit ``c``, in the sweep's write transaction: between the
    unlocked read and now the deferred probe may have been admitted, and releasing the circuit then would let a
    second probe through. The probe's row is read locked (on PostgreSQL), skipping it when another transaction
    holds it: an admission under way, not committed yet, so not stale for this sweep (the next one looks again)."""
    exists = conn.execute(select(m.c.id).where(m.c.id == c.probe_id)).first() is not None
    if not exists:
        return True
    status = conn.execute(select(m.c.status).where(m.c.id == c.probe_id)
                          .with_for_update(skip_locked=True)).scalar_one_or_none()
    return status is not None and _stale(status, c.updated_at, now)


def _lock(conn: Connection, keys: Sequence[Key]) -> dict[Key, Circuit]:
    if not keys:
        return {}
    wanted = [and_(ct.c.service == s, ct.c.role == r, ct.c.model == mo) for s, r, mo in keys]
    rows = conn.execute(select(ct).where(or_(*wanted)).order_by(ct.c.service, ct.c.role, ct.c.model)
                        .with_for_update())
    return {c.key: c for c in map(Circuit.of, rows)}


def _store(conn: Connection, c: Circuit, *, exists: bool) -> None:
    if exists:
        values = {k: v for k, v in c.values().items() if k not in ("service", "role", "model")}
        conn.execute(update(ct).where(ct.c.service == c.service, ct.c.role == c.role, ct.c.model == c.model)
                     .values(**values))
    else:
        conn.execute(insert(ct).values(**c.values()))


def _store_cursor(conn: Connection, exists: bool, at: Position, now: float) -> None:
    values = {**at.columns(), "updated_at": now}
    if exists:
        conn.execute(update(cc).where(cc.c.id == CURSOR_ID).values(**values))
    else:
        conn.execute(insert(cc).values(id=CURSOR_ID, **values))


def record(conn: Connection, changes: Sequence[Change], *, now: float) -> None:
    """Write each change's ``bus_events`` row and its introspection events (one statement each)."""
    ledger.record(conn, [c.audit() for c in changes], now=now)
    write(conn, [e for c in changes for e in c.traces()], now=now)


# -- reads and the probe claim, for the admission policy and the API ----------------------------------------

def read_all(conn: Connection, *, only_unclosed: bool = False) -> list[Circuit]:
    """Every circuit (or only those not closed), by key."""
    stmt = select(ct).order_by(ct.c.service, ct.c.role, ct.c.model)
    if only_unclosed:
        stmt = stmt.where(ct.c.state != CLOSED)
    return [Circuit.of(r) for r in conn.execute(stmt)]


def read_one(conn: Connection, key: Key, *, lock: bool = False) -> Circuit | None:
    """One circuit, or None when it has never seen an outcome; ``lock``: its row locked until the caller's
    transaction ends (PostgreSQL), so the sweep cannot release it meanwhile."""
    q = select(ct).where(ct.c.service == key[0], ct.c.role == key[1], ct.c.model == key[2])
    if lock and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).first()
    return Circuit.of(row) if row else None


def claim_probe(conn: Connection, c: Circuit, assignment_id: str, *, now: float, tenant: str,
                run_id: str | None) -> Circuit | None:
    """Make ``assignment_id`` the probe of open circuit ``c`` if its cool-down is over, in the caller's
    transaction: one conditional UPDATE, so of several dispatchers exactly one wins. The winner writes the
    ``circuit_half_open`` row and trace. Returns the half-open circuit, or None when another won (or it is not due).
    """
    claimed = claim(c, assignment_id, now, tenant=tenant, run_id=run_id)
    if claimed is None:
        return None
    probing, change = claimed
    won = conn.execute(update(ct).where(ct.c.service == c.service, ct.c.role == c.role, ct.c.model == c.model,
                                        ct.c.state == OPEN, ct.c.retry_at <= now)
                       .values(state=HALF_OPEN, probe_id=assignment_id, updated_at=now)).rowcount == 1
    if not won:
        return None
    stored = read_one(conn, c.key) or probing
    change = replace(change, circuit=stored)
    record(conn, [change], now=now)
    return stored
