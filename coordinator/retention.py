"""``cogo-bus-retention``: prunes what no one needs any more — ended run trees with every row of theirs
(bus rows, audit rows, introspection events, tokens, fan-ins and their arrivals, scopes, approvals) — once
their root ended more than ``retention_days`` ago. Replay works on a run until then.

The audit rows it deletes are folded into the counters first (``coordinator/metrics/fold.py``), in the same
transaction as the delete, which checks that the fold has read every one of them: the counters never lose a row
to retention, and never go down (``metric_totals`` is never pruned). While it waits for the fold (a run's rows not
folded yet, or a fold that fails) it says since when in ``metric_cursor.retention_waiting_since``, which
``/metrics`` reports (``cogo_retention_fold_wait_seconds``) and an alert watches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, select, update

from bus import ledger
from bus.schema import agent_messages as m
from bus.schema import bus_events, introspection_events
from bus.schema import metric_cursor as mc
from coordinator.metrics import fold
from coordinator.schema import (
    approvals,
    branch_scopes,
    fan_arrivals,
    fan_ins,
    idempotency_keys,
    run_visits,
    runs,
    tokens,
)
from coordinator.state import RUN_TERMINAL

log = logging.getLogger(__name__)
BATCH = 200
"""Root runs one pass prunes at most (with their trees)."""
APPLIED = "event_applied"
APPLIED_BATCH = 5000
"""``event_applied`` rows one transaction deletes at most (by id): a first pass on an old ledger deletes one row
per brain step ever taken, and must not hold the fold's cursor (and SQLite's write lock) for all of them."""
APPLIED_BATCHES = 100
"""Transactions of ``APPLIED_BATCH`` one pass takes at most (the next pass deletes the rest)."""


@dataclass(frozen=True)
class Pruned:
    """How many runs (with their rows), orphan messages and brain ``event_applied`` rows one pass removed."""

    runs: int
    messages: int
    applied: int = 0


def prune(engine: Engine, *, retention_days: float, clock: Callable[[], float] = time.time) -> Pruned:
    """Delete whole run trees whose root ended before the horizon, with everything that belongs to them.

    Trees, not runs: a finished child of a root that is still running carries spend its root's budget counts.
    """
    cutoff = clock() - retention_days * 86400
    try:
        fold.fold(engine, clock=clock)  # catch up in the fold's own batches first
    except Exception:
        _waiting(engine, clock())  # best effort: the ledger may be what failed
        raise
    with engine.begin() as conn:
        fold.fold_once(conn, now=clock())  # what was written since; the fold's cursor stays locked until commit
        roots = select(runs.c.id).where(runs.c.id == runs.c.root_run_id, runs.c.status.in_(RUN_TERMINAL),
                                        runs.c.ended_at < cutoff).limit(BATCH).scalar_subquery()
        ids = [r.id for r in conn.execute(select(runs.c.id).where(runs.c.root_run_id.in_(roots)))]
        unread = fold.behind(conn, ids) if ids else []
        if unread:  # never delete an audit row the counters have not counted: the next pass prunes them
            log.warning("retention waits for the metrics fold: %d audit rows of %d runs not folded yet",
                        len(unread), len(ids))
            ids = []
        _mark_waiting(conn, clock() if unread else None)
        for table, column in ((introspection_events, introspection_events.c.run_id),
                              (bus_events, bus_events.c.run_id), (m, m.c.run_id), (tokens, tokens.c.run_id),
                              (fan_arrivals, fan_arrivals.c.run_id), (fan_ins, fan_ins.c.run_id),
                              (branch_scopes, branch_scopes.c.run_id),
                              (run_visits, run_visits.c.run_id),
                              (approvals, approvals.c.run_id), (idempotency_keys, idempotency_keys.c.run_id),
                              (runs, runs.c.id)):
            if ids:
                conn.execute(delete(table).where(column.in_(ids)))
        orphans = conn.execute(delete(m).where(m.c.run_id.is_(None), m.c.status.in_((ledger.SETTLED, ledger.DONE)),
                                               m.c.updated_at < cutoff)).rowcount
    return Pruned(len(ids), orphans, _prune_applied(engine, cutoff))


def _prune_applied(engine: Engine, cutoff: float) -> int:
    """Delete the brain's ``event_applied`` rows written before ``cutoff`` and folded already (they belong to no
    run: they feed the metrics), in transactions of at most ``APPLIED_BATCH`` rows, by id."""
    deleted = 0
    for _ in range(APPLIED_BATCHES):
        with engine.begin() as conn:
            ids = list(conn.execute(  # through the index on (kind, created_at), in its order
                select(bus_events.c.id).where(bus_events.c.kind == APPLIED, bus_events.c.created_at < cutoff,
                                              bus_events.c.id <= fold.folded_below(conn))
                .order_by(bus_events.c.created_at).limit(APPLIED_BATCH)).scalars())
            if ids:
                conn.execute(delete(bus_events).where(bus_events.c.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < APPLIED_BATCH:
            break
    return deleted


def _mark_waiting(conn: Connection, now: float | None) -> None:
    """Record that retention waits for the fold since ``now`` (kept when it already waited), or that it does not
    (None)."""
    since = None if now is None else func.coalesce(mc.c.retention_waiting_since, now)
    conn.execute(update(mc).where(mc.c.id == fold.CURSOR_ID).values(retention_waiting_since=since))


def _waiting(engine: Engine, now: float) -> None:
    """``_mark_waiting`` in its own transaction, when the fold itself failed."""
    try:
        with engine.begin() as conn:
            _mark_waiting(conn, now)
    except Exception as exc:  # the ledger is down: the fold's failure is what the pass reports
        log.warning("cannot record that retention waits for the metrics fold: %s", exc)
