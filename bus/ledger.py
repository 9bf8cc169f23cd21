"""The ledger: every bus message is an ``agent_messages`` row and every change of status is conditional.

A status change is ``UPDATE … WHERE id = ? AND status IN (…)`` (and, for a worker, ``AND attempts = ?``,
the attempt number acting as a fencing token), so a duplicate delivery or a late worker changes nothing.
Each function here runs inside the caller's transaction; none commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Update, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.sql import ClauseElement

from bus.envelope import Usage
from bus.errors import ContractError
from bus.routing import DECIDE, ORCHESTRATOR, Route
from bus.schema import agent_messages as m
from bus.schema import bus_events

QUEUED = "queued"
DISPATCHED = "dispatched"
RUNNING = "running"
RETRY_WAIT = "retry_wait"
DONE = "done"
FAILED = "failed"
DEAD = "dead"
SETTLED = "settled"

FINAL = frozenset({DONE, FAILED, DEAD})
OPEN = frozenset({QUEUED, DISPATCHED, RUNNING, RETRY_WAIT})

# The one state machine of a bus row. A decide row goes queued → done when the brain applies it;
# an assignment goes queued → dispatched → running → done | failed | dead, then settled.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    QUEUED: frozenset({DISPATCHED, DONE, FAILED, DEAD}),
    DISPATCHED: frozenset({RUNNING, FAILED, DEAD}),
    RUNNING: frozenset({DONE, FAILED, RETRY_WAIT, DEAD}),
    RETRY_WAIT: frozenset({DISPATCHED, FAILED, DEAD}),
    DONE: frozenset({SETTLED}),
    FAILED: frozenset({SETTLED}),
    DEAD: frozenset({SETTLED, QUEUED}),  # → queued: only a held dead letter an operator re-queues (``requeue``)
    SETTLED: frozenset(),
}

HELD_LETTER = "held"
"""``agent_messages.dead_letter`` of a ``dead`` assignment held for an operator (its run waits for it)."""

SNIPPET_CHARS = 2000


def can_move(from_status: str, to_status: str) -> bool:
    """Whether the state machine allows ``from_status → to_status``."""
    return to_status in TRANSITIONS.get(from_status, ())


def new_id() -> str:
    """A fresh message id."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class NewMessage:
    """A row to insert: the outbox entry a transaction writes before anything is sent."""

    route: Route
    kind: str
    payload: dict[str, Any]
    run_id: str | None = None
    causation_id: str | None = None
    max_attempts: int = 1
    retry_at: float | None = None
    id: str = field(default_factory=new_id)

    def row(self, now: float) -> dict[str, Any]:
        """The values of the ``agent_messages`` row."""
        if self.max_attempts < 1:
            raise ContractError(f"max_attempts must be at least 1, got {self.max_attempts}")
        return {
            "id": self.id, "service": self.route.service, "role": self.route.role, "shard": self.route.shard,
            "tenant": self.route.tenant, "run_id": self.run_id, "kind": self.kind,
            "causation_id": self.causation_id, "payload": self.payload, "status": QUEUED, "attempts": 0,
            "max_attempts": self.max_attempts, "retry_at": self.retry_at, "usage_tokens": 0,
            "usage_cost_usd": 0.0, "created_at": now, "updated_at": now,
        }




def brain_event(*, run_id: str, tenant: str, kind: str, payload: dict[str, Any], shard: int,
                causation_id: str | None = None, retry_at: float | None = None, id: str | None = None) -> NewMessage:
    """The one way to address a brain event: a decide row on ``shard``, its run tree's (``routing.shard_for`` of
    the root run's id), so every event of a run tree goes to the same brain queue and no two shards ever apply
    events of one tree."""
    return NewMessage(route=Route(ORCHESTRATOR, DECIDE, shard, tenant), kind=kind, payload=payload, run_id=run_id,
                      causation_id=causation_id, retry_at=retry_at, **({"id": id} if id else {}))

_INSERT_MESSAGES = insert(m)
_INSERT_BUS_EVENTS = insert(bus_events)


def highest_open_shard(conn: Connection) -> int | None:
    """The highest shard that unfinished work was written on (None: no open row)."""
    return conn.execute(select(func.max(m.c.shard)).where(m.c.status.in_(sorted(OPEN)))).scalar()


def insert_messages(conn: Connection, messages: Sequence[NewMessage], *, now: float) -> None:
    """Insert outbox rows in one statement."""
    if messages:
        conn.execute(_INSERT_MESSAGES, [msg.row(now) for msg in messages])


def record(conn: Connection, events: Iterable[Mapping[str, Any]], *, now: float) -> None:
    """Append ``bus_events`` rows: ``{message_id, run_id, tenant, kind, attempt, detail}`` each."""
    rows = [{"attempt": 0, "detail": None, "run_id": None, **e, "created_at": now} for e in events]
    if rows:
        conn.execute(_INSERT_BUS_EVENTS, rows)


def move(conn: Connection, message_id: str, *, from_: Iterable[str], to: str, now: float,
         attempt: int | None = None, values: Mapping[str, Any] | None = None) -> bool:
    """Move one row to ``to`` if it is in one of ``from_`` (and at ``attempt``, when given).

    Returns:
        True when this call changed the row; False when it was not in that state (a duplicate).

    Raises:
        ContractError: the state machine does not allow one of the moves asked for.
    """
    sources = tuple(from_)
    for source in sources:
        if not can_move(source, to):
            raise ContractError(f"a bus row cannot move from {source} to {to}")
    values = dict(values or {})
    if any(isinstance(v, ClauseElement) for v in values.values()):  # e.g. usage_tokens + n: built each time
        where = [m.c.id == message_id, m.c.status.in_(sources)]
        if attempt is not None:
            where.append(m.c.attempts == attempt)
        stmt = update(m).where(and_(*where)).values(status=to, updated_at=now, **values)
        return conn.execute(stmt).rowcount == 1
    params = {"_id": message_id, "_now": now, **{f"_v_{k}": v for k, v in values.items()}}
    if attempt is not None:
        params["_attempt"] = attempt
    stmt = _move_statement(sources, to, attempt is not None, tuple(sorted(values)))
    return conn.execute(stmt, params).rowcount == 1


@lru_cache(maxsize=256)
def _move_statement(sources: tuple[str, ...], to: str, fenced: bool, keys: tuple[str, ...]) -> Update:
    """The conditional UPDATE of ``move``, built once per shape: only its parameters change per call.

    Building and cache-keying a Core statement costs ~0.1 ms, several times the UPDATE itself on SQLite.
    """
    where = [m.c.id == bindparam("_id"), m.c.status.in_(sources)]
    if fenced:
        where.append(m.c.attempts == bindparam("_attempt"))
    values = {k: bindparam(f"_v_{k}", type_=m.c[k].type) for k in keys}
    return update(m).where(and_(*where)).values(status=to, updated_at=bindparam("_now"), **values)


_CLAIM = (update(m)
          .where(m.c.id == bindparam("_id"), m.c.status == DISPATCHED)
          .values(status=RUNNING, attempts=m.c.attempts + 1, lease_until=bindparam("_lease_until"),
                  updated_at=bindparam("_now"))
          .returning(m.c.attempts, m.c.max_attempts, m.c.run_id, m.c.tenant, m.c.service, m.c.role, m.c.shard,
                     m.c.payload, m.c.usage_tokens, m.c.usage_cost_usd, m.c.dispatched_at))
"""``claim``'s statement, built once (see ``_move_statement``)."""


@dataclass(frozen=True)
class Claim:
    """A worker's hold on an assignment: the attempt number fences every later write."""

    id: str
    attempt: int
    max_attempts: int
    run_id: str | None
    tenant: str
    route: Route
    payload: dict[str, Any]
    lease_until: float
    spent: Usage = Usage()
    """What earlier attempts of this assignment already spent: the budget covers all attempts together."""
    claimed_at: float = 0.0
    """When this attempt took the assignment (the end of its queue wait, the start of its run)."""
    dispatched_at: float | None = None
    """When the dispatcher admitted it for this attempt (the start of its queue wait); None on rows admitted
    before the column existed."""

    @property
    def wait_s(self) -> float | None:
        """How long the attempt waited in its worker queue (dispatched → claimed), never negative."""
        return None if self.dispatched_at is None else max(0.0, self.claimed_at - self.dispatched_at)


def claim(conn: Connection, message_id: str, *, lease_s: float, now: float) -> Claim | None:
    """Take a dispatched assignment: ``dispatched → running``, one more attempt, a lease.

    Returns:
        The claim, or None when the row was not dispatched (a duplicate or a stale delivery).
    """
    lease_until = now + lease_s
    row = conn.execute(_CLAIM, {"_id": message_id, "_lease_until": lease_until, "_now": now}).first()
    if row is None:
        return None
    route = Route(row.service, row.role, row.shard, row.tenant)
    return Claim(message_id, row.attempts, row.max_attempts, row.run_id, row.tenant, route, row.payload,
                 lease_until, Usage(tokens=row.usage_tokens, cost_usd=row.usage_cost_usd), claimed_at=now,
                 dispatched_at=row.dispatched_at)


_IDLE = or_(m.c.status != DEAD, m.c.lease_until.is_(None), m.c.lease_until <= bindparam("_now"))
"""A final row no attempt may still be running on. A ``dead`` row keeps ``lease_until`` while the attempt
that was running when it was abandoned may still spend; that attempt's end (``close_abandoned``), or the
reclaimer once the lease ran out, clears it."""

DEFAULT_MODEL = "cogo-local"
"""An assignment's model when its contract names none (``bus.envelope.Assignment.model``)."""
MODEL = func.coalesce(m.c.payload[("__assignment", "model")].as_string(), DEFAULT_MODEL)
"""An ``agent_messages`` row's model in SQL: what its contract names, or ``DEFAULT_MODEL`` (``model_of`` in Python)."""
_MODEL = MODEL.label("model")
_SETTLED = (m.c.id, m.c.run_id, m.c.usage_tokens, m.c.usage_cost_usd, m.c.held_tokens, m.c.held_cost_usd,
            m.c.tenant, m.c.service, m.c.role, m.c.period_held, _MODEL)
_SETTLE = (update(m).where(m.c.id == bindparam("_id"), m.c.status.in_(FINAL), _IDLE)
           .values(status=SETTLED, settled_at=bindparam("_now"), updated_at=bindparam("_now"))
           .returning(*_SETTLED))


@dataclass(frozen=True)
class Settled:
    """A settled assignment: its run, its total usage, what it held against budgets (None: nothing), and whose
    work on which route it was."""

    id: str
    run_id: str | None
    usage: Usage
    held: Usage | None
    tenant: str = ""
    service: str = ""
    role: str = ""
    period_held: Any = None
    """What it held against its tenant's period budgets (``coordinator/admission/period.py``), or None."""
    model: str = DEFAULT_MODEL
    """The model its contract names (what its usage is counted under: ``cogo_tokens_total{tenant,model}``)."""

    @classmethod
    def of(cls, row: Any) -> Settled:
        """From a row settled by ``_SETTLE`` (or a whole ``agent_messages`` row)."""
        held = None if row.held_tokens is None else Usage(tokens=row.held_tokens, cost_usd=row.held_cost_usd or 0.0)
        values = row._mapping
        model = values["model"] if "model" in values else model_of(values.get("payload"))
        return cls(row.id, row.run_id, Usage(tokens=row.usage_tokens, cost_usd=row.usage_cost_usd), held,
                   row.tenant, row.service, row.role, row.period_held, str(model or DEFAULT_MODEL))


def model_of(payload: Any) -> str:
    """The model an assignment's payload names, or ``DEFAULT_MODEL``."""
    assignment = payload.get("__assignment") if isinstance(payload, dict) else None
    model = assignment.get("model") if isinstance(assignment, dict) else None
    return model if isinstance(model, str) and model else DEFAULT_MODEL


def settle(conn: Connection, message_id: str, *, now: float) -> Settled | None:
    """``done | failed | dead → settled``; returns what it settled, or None if already settled (or if it is
    ``dead`` with an abandoned attempt that may still be running)."""
    row = conn.execute(_SETTLE, {"_id": message_id, "_now": now}).first()
    return None if row is None else Settled.of(row)


def settle_abandoned(conn: Connection, message_ids: Iterable[str], *, now: float) -> list[Settled]:
    """Settle the abandoned (``dead``) assignments among ``message_ids`` that no attempt is running."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return []
    rows = conn.execute(update(m).where(m.c.id.in_(ids), m.c.status == DEAD, _IDLE)
                        .values(status=SETTLED, settled_at=bindparam("_now"), updated_at=bindparam("_now"))
                        .returning(*_SETTLED), {"_now": now}).all()
    return [Settled.of(r) for r in rows]


def close_abandoned(conn: Connection, message_id: str, *, attempt: int, now: float,
                    usage: Usage | None = None) -> bool:
    """The attempt that was running when its assignment was abandoned has ended (or its lease ran out):
    record its total usage (when known) and clear the lease, so the row can be settled.

    Returns:
        True when this call closed it (the caller then reports it to the brain, ``task_failed``); False when
        the row is not an abandoned row of that attempt, or was already closed.
    """
    values: dict[str, Any] = {"lease_until": None, "updated_at": now}
    if usage is not None:
        values |= {"usage_tokens": usage.tokens, "usage_cost_usd": usage.cost_usd}
    stmt = (update(m).where(m.c.id == message_id, m.c.status == DEAD, m.c.attempts == attempt,
                            m.c.lease_until.is_not(None)).values(**values))
    return conn.execute(stmt).rowcount == 1


def defer(conn: Connection, message_id: str, *, retry_at: float, now: float, from_: str = QUEUED,
          waiting_for: str | None = None, waiting_since: float | None = None) -> bool:
    """Leave a ``queued`` (or ``retry_wait``) assignment as it is, to be admitted again at ``retry_at`` (an
    admission policy said not yet: ``waiting_for`` its code, since ``waiting_since``). Its status does not
    change: it is not admitted, so it reserves nothing and uses no attempt."""
    stmt = (update(m).where(m.c.id == message_id, m.c.status == from_)
            .values(retry_at=retry_at, updated_at=now, waiting_for=waiting_for, waiting_since=waiting_since))
    return conn.execute(stmt).rowcount == 1


def requeue(conn: Connection, message_id: str, *, now: float, values: Mapping[str, Any]) -> bool:
    """``dead → queued`` for a dead letter held for an operator (``dead_letter = 'held'``, no attempt running):
    its new attempts go through admission again. False when it is not such a letter now (acted on already)."""
    assert can_move(DEAD, QUEUED)
    stmt = (update(m).where(m.c.id == message_id, m.c.status == DEAD, m.c.dead_letter == HELD_LETTER,
                            m.c.lease_until.is_(None))
            .values(status=QUEUED, updated_at=now, **values))
    return conn.execute(stmt).rowcount == 1


def renew_lease(conn: Connection, message_id: str, *, attempt: int, lease_s: float, now: float) -> bool:
    """Extend a running attempt's lease; False when the attempt is no longer the current one.

    An attempt whose assignment was abandoned while it ran (``dead``, lease kept) is renewed too: it may still
    spend, so its budget stays reserved until it ends.
    """
    still_running = or_(m.c.status == RUNNING, and_(m.c.status == DEAD, m.c.lease_until.is_not(None)))
    stmt = (update(m).where(m.c.id == message_id, still_running, m.c.attempts == attempt)
            .values(lease_until=now + lease_s, updated_at=now))
    return conn.execute(stmt).rowcount == 1


def snippet(value: Any) -> str:
    """A short, human-readable text of a result for ``result_snippet``."""
    import json
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"
