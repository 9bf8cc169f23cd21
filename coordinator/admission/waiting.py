"""Waking the assignments that wait for a slot (``coordinator/admission/concurrency.py``) when one is freed.

When the brain settles an assignment, its slot is free: the oldest waiting assignment of every tenant on the
same route, and of the same tenant on any route, is asked again now (one statement, only while the policy
table sets a concurrency limit), and the dispatcher's fair-share rule picks which of them takes the slot. Those
it does not pick wait for the next one; a missed wake costs at most ``RECHECK_S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Connection, func, or_, select, tuple_, update

from bus import ledger
from bus.celery_app import TASK_EXECUTE
from bus.outbox import Delivery
from bus.routing import execute_queue
from bus.schema import agent_messages as m
from coordinator.admission.table import Live


class Waiting:
    """The brain's side of concurrency limits."""

    def __init__(self, policy_path: Path):
        self.table = Live(policy_path)

    def wake(self, conn: Connection, settled: Sequence[ledger.Settled], now: float) -> list[Delivery]:
        """Ask again now the oldest waiting assignment of each tenant on the routes of ``settled``, and of their
        tenants on any route; returns the deliveries to send after commit."""
        if not settled or not self.table.get(now).limits_concurrency:
            return []
        tenants = sorted({s.tenant for s in settled})
        routes = sorted({(s.service, s.role) for s in settled})
        ranked = (select(m.c.id, func.row_number().over(partition_by=m.c.tenant, order_by=m.c.created_at).label("n"))
                  .where(m.c.status == ledger.QUEUED, m.c.kind == "assignment", m.c.retry_at > now,
                         or_(m.c.tenant.in_(tenants), tuple_(m.c.service, m.c.role).in_(routes)))
                  .subquery())
        woken = conn.execute(update(m).where(m.c.id.in_(select(ranked.c.id).where(ranked.c.n == 1)),
                                             m.c.status == ledger.QUEUED)
                             .values(retry_at=now).returning(m.c.id, m.c.shard)).all()
        return [Delivery(TASK_EXECUTE, execute_queue(r.shard), r.id) for r in woken]
