"""``cogo-bus-retention``: prunes what no one needs any more — ended run trees with every row of theirs
(bus rows, audit rows, introspection events, tokens, fan-ins and their arrivals, scopes, approvals) — once
their root ended more than ``retention_days`` ago. Replay works on a run until then."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select

from bus import ledger
from bus.schema import agent_messages as m
from bus.schema import bus_events, introspection_events
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


@dataclass(frozen=True)
class Pruned:
    """How many runs (with their rows) and orphan messages one pass removed."""

    runs: int
    messages: int


def prune(engine: Engine, *, retention_days: float, clock: Callable[[], float] = time.time) -> Pruned:
    """Delete whole run trees whose root ended before the horizon, with everything that belongs to them.

    Trees, not runs: a finished child of a root that is still running carries spend its root's budget counts.
    """
    cutoff = clock() - retention_days * 86400
    with engine.begin() as conn:
        roots = select(runs.c.id).where(runs.c.id == runs.c.root_run_id, runs.c.status.in_(RUN_TERMINAL),
                                        runs.c.ended_at < cutoff).limit(BATCH).scalar_subquery()
        ids = [r.id for r in conn.execute(select(runs.c.id).where(runs.c.root_run_id.in_(roots)))]
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
    return Pruned(len(ids), orphans)
