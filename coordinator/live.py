"""What changed since a position, for a live view: new introspection events, the approvals and run statuses they
change, filtered to what one principal may see.

Every step the fleet takes writes introspection events in the same transaction as its state (``bus/introspection``),
so the event table's ids are a cursor over every change a person watches: a run's status changes only in a step
that writes events, and an approval is created and resolved by such steps (``operation.approval.*``).

Ids may commit out of order on PostgreSQL (an id is taken at insert and seen at commit), so a stream keeps a
``bus.cursor.Position`` — a low mark below which everything is behind it, and the ids it read above it — not "the
highest id read": a read re-reads the ids between the low mark and the highest id read (ids only), and tells the
rows it had not read, late commits included. A hole below an id the stream read ``SETTLE_S`` ago by its own clock
is given up (``bus/cursor.py``).

A stream of every run walks every row of the table, whoever's (an index range of ids, ``READ_LIMIT`` at most past
the highest), so its low mark rises over other tenants' rows too; only the rows this principal may see, outside the
quiet categories, are read in full (one statement filtered in SQL), so a read costs the same however much the other
tenants do. A stream of one run walks only that run's events and its child runs' (the ``(run_id, id)`` index), so
resuming it from far back reads that run's history, not the table's; a child's events only tell its status.

A stream tells a client its position as the low mark (``resume_id``): resuming from it re-reads everything above
it, which can tell a client again an event it already had: the client drops those by event id.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, func, or_, select

from bus.cursor import Position
from bus.schema import introspection_events as ie
from coordinator.schema import runs

READ_LIMIT = 200
"""The most new event ids one read takes past the highest id read."""
SETTLE_S = 15.0
"""An id still missing this long (the stream's clock) after a higher one was read is taken for one that will never
commit (a rolled-back transaction's); a live view gives up sooner than the metrics fold, and the pages re-read on
their own."""
CAP = 2000
"""The most ids a stream's position keeps above its low mark (``bus/cursor.py``)."""
START_LOOK = 1000
"""The newest ids a stream that asked for nothing old looks at to place itself."""
DATA_CHARS = 1000
"""An event's data is carried when its JSON is at most this long (else ``data: null, data_cut: true``)."""
QUIET = ("sql",)
"""Categories not streamed: the SQL a step ran is for the trace, not for a live view."""
APPROVAL_TYPES = {"operation.approval.create": "requested", "operation.approval.resolve": "resolved"}
_EVENT_COLUMNS = (ie.c.id, ie.c.run_id, ie.c.category, ie.c.type, ie.c.node_id, ie.c.token_id, ie.c.data,
                  ie.c.created_at)
_RUN_COLUMNS = (runs.c.id, runs.c.tenant, runs.c.status, runs.c.workflow, runs.c.intent, runs.c.parent_run_id,
                runs.c.updated_at)


@dataclass(frozen=True)
class Change:
    """One thing to tell a live view: ``kind`` is ``trace``, ``approval`` or ``run``."""

    kind: str
    data: dict[str, Any]
    event_id: int | None = None
    """The introspection event it comes from (a run status: None, told after the events that changed it)."""


@dataclass(frozen=True)
class Batch:
    """What one read found: the changes in order, and the position to read from next."""

    position: Position
    changes: list[Change]
    full: bool
    """Whether the read hit its limit (more is waiting: read again at once)."""

    def resume_id(self, change: Change | None = None) -> int:
        """The low mark a client holds once it has ``change`` (None: every change of the batch): resuming from it
        misses nothing. The rows of the batch come in id order, so once event ``e`` is told, every id up to
        ``min(low mark, e)`` is behind the client."""
        low = self.position.low_id
        return low if change is None or change.event_id is None else min(low, change.event_id)


@dataclass
class Seen:
    """The run statuses a stream has told, so a status is told when it changes (bounded: the oldest are forgotten)."""

    limit: int = 2000
    statuses: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def changed(self, run_id: str, status: str) -> bool:
        """Whether ``status`` is news for ``run_id`` (and remember it)."""
        before = self.statuses.pop(run_id, None)
        self.statuses[run_id] = status
        while len(self.statuses) > self.limit:
            self.statuses.popitem(last=False)
        return before != status


def latest_id(conn: Connection) -> int:
    """The newest committed event's id (0 when there is none)."""
    return conn.execute(select(func.max(ie.c.id))).scalar() or 0


def _walked(run_id: str | None) -> Select:
    """The ids a stream walks: every event's, or those of one run and of its child runs."""
    stmt = select(ie.c.id)
    if run_id is None:
        return stmt
    children = select(runs.c.id).where(runs.c.parent_run_id == run_id)
    return stmt.where(or_(ie.c.run_id == run_id, ie.c.run_id.in_(children)))


def start(conn: Connection, *, now: float, run_id: str | None = None, look: int = START_LOOK) -> Position:
    """Where a stream that asked for nothing old starts: past every event committed now, yet still before an id
    taken by a transaction that commits later (its event is news).

    The newest ``look`` ids the stream walks are taken as read, and the holes between them as open until
    ``SETTLE_S`` from ``now`` (the stream's clock); below them everything is behind.
    """
    ids = conn.execute(_walked(run_id).order_by(ie.c.id.desc()).limit(look)).scalars().all()
    if not ids:
        return Position()
    return Position(ids[-1] - 1, frozenset(ids), ((ids[0], now),)).after((), now=now, settle_s=SETTLE_S)


def resume(conn: Connection, low_id: int) -> Position:
    """The position of a client that holds ``low_id`` (everything up to it is behind it); a mark past the newest
    committed event is taken as the newest (ids above it are not even taken yet)."""
    return Position(min(low_id, latest_id(conn)))


def read_changes(conn: Connection, at: Position, *, tenant: str | None, run_id: str | None, seen: Seen, now: float,
                 limit: int = READ_LIMIT, settle_s: float = SETTLE_S, cap: int = CAP) -> Batch:
    """The changes past ``at`` that ``tenant`` (None: every tenant) may see, of one run or of all.

    Args:
        at: where the stream is.
        tenant: the only tenant whose runs are told, or None for an admin.
        run_id: only this run's events, and the statuses of its child runs (the caller checked that it may see it).
        seen: the run statuses this stream already told.
        now: the stream's clock (epoch seconds), which ages the holes below the highest id read.
    """
    walked = _walked(run_id)
    high = at.high_id
    known = conn.execute(walked.where(ie.c.id > at.low_id, ie.c.id <= high)).scalars().all() \
        if high > at.low_id else []
    fresh = conn.execute(walked.where(ie.c.id > high).order_by(ie.c.id).limit(limit)).scalars().all()
    new = [i for i in known if i not in at.seen] + list(fresh)
    position = at.after([*known, *fresh], now=now, settle_s=settle_s, cap=cap)
    full = len(fresh) == limit
    if not new:
        return Batch(position, [], full)
    rows, children = _visible(conn, new, tenant=tenant, run_id=run_id)
    touched = sorted({r.run_id for r in rows} | set(children))
    info = {r.id: r for r in conn.execute(select(*_RUN_COLUMNS).where(runs.c.id.in_(touched)))} if touched else {}
    changes: list[Change] = []
    for row in rows:
        changes.append(Change("trace", _event(row), row.id))
        if row.type in APPROVAL_TYPES:
            data = row.data if isinstance(row.data, dict) else {}
            changes.append(Change("approval", {"run_id": row.run_id, "node_id": row.node_id, "event_id": row.id,
                                               "change": APPROVAL_TYPES[row.type],
                                               "approval_id": data.get("approval_id"), "status": data.get("status")},
                                  row.id))
    for run in sorted(info.values(), key=lambda r: r.id):
        if (tenant is None or run.tenant == tenant) and seen.changed(run.id, run.status):
            changes.append(Change("run", {"run_id": run.id, "status": run.status, "tenant": run.tenant,
                                          "workflow": run.workflow, "intent": run.intent,
                                          "parent_run_id": run.parent_run_id, "updated_at": run.updated_at}))
    return Batch(position, changes, full)


def _visible(conn: Connection, ids: Sequence[int], *, tenant: str | None,
             run_id: str | None) -> tuple[list[Any], list[str]]:
    """Of the events ``ids``: the ones told in full (in id order), and the child runs (of ``run_id``) they touch.

    The filters are SQL: another tenant's event, a quiet one, a child run's, is never read in full."""
    stmt = select(*_EVENT_COLUMNS).where(ie.c.id.in_(ids), ie.c.category.not_in(QUIET))
    if tenant is not None:
        stmt = stmt.select_from(ie.join(runs, runs.c.id == ie.c.run_id)).where(runs.c.tenant == tenant)
    if run_id is None:
        return list(conn.execute(stmt.order_by(ie.c.id))), []
    rows = list(conn.execute(stmt.where(ie.c.run_id == run_id).order_by(ie.c.id)))
    children = conn.execute(select(ie.c.run_id).distinct().where(
        ie.c.id.in_(ids), ie.c.run_id != run_id, ie.c.category.not_in(QUIET))).scalars().all()
    return rows, list(children)


def _event(row: Any) -> dict[str, Any]:
    """An event as a stream carries it: its data only when short (the run's events endpoint has all of it)."""
    event = {"id": row.id, "run_id": row.run_id, "category": row.category, "type": row.type,
             "node_id": row.node_id, "token_id": row.token_id, "created_at": row.created_at,
             "data": None, "data_cut": False}
    if row.data:
        text = json.dumps(row.data, default=str)
        if len(text) <= DATA_CHARS:
            event["data"] = row.data
        else:
            event["data_cut"] = True
    return event
