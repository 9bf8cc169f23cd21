"""Waking the assignments that wait for a slot (``coordinator/admission/concurrency.py``) when one is freed.

When the brain settles an assignment, its slot is free: the oldest assignment waiting for a slot
(``concurrency.*``) of every tenant on the same route, and of the same tenant on any route, in the same shard, is
asked again now (one statement, only while
the policy table sets a concurrency limit), and the dispatcher's fair-share rule picks which of them takes the
slot. Those it does not pick wait for the next one; one not woken (another shard's) asks again after
``RECHECK_S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import ColumnElement, Connection, func, or_, select, tuple_, update

from bus import ledger
from bus.celery_app import TASK_EXECUTE
from bus.outbox import Delivery
from bus.routing import execute_queue
from bus.schema import agent_messages as m
from coordinator.admission.table import live


class Waiting:
    """The brain's side of concurrency limits."""

    def __init__(self, policy_path: Path):
        self.table = live(policy_path)

    def wake(self, conn: Connection, settled: Sequence[ledger.Settled], now: float, shard: int) -> list[Delivery]:
        """Ask again now the oldest waiting assignment of each tenant on the routes of ``settled``, and of their
        tenants on any route, of ``shard`` (a transaction stays in its shard; another shard's waiting assignments
        re-ask by themselves); rows a dispatcher is admitting are passed over, not waited for. Returns the
        deliveries to send after commit."""
        if not settled or not self.table.get(now).limits_concurrency:
            return []
        tenants = sorted({s.tenant for s in settled})
        routes = sorted({(s.service, s.role) for s in settled})
        woken = wake_oldest(conn, now, m.c.shard == shard, m.c.waiting_for.startswith("concurrency."),
                            or_(m.c.tenant.in_(tenants), tuple_(m.c.service, m.c.role).in_(routes)))
        return [Delivery(TASK_EXECUTE, execute_queue(shard_), row_id) for row_id, shard_ in woken]


def wake_oldest(conn: Connection, now: float, *where: ColumnElement[bool]) -> list[tuple[str, int]]:
    """Ask again now the oldest waiting assignment of each tenant among those ``where`` selects; rows another
    transaction holds (being admitted) are passed over, never waited for. Returns their ``(id, shard)``."""
    ranked = (select(m.c.id, func.row_number().over(partition_by=m.c.tenant, order_by=m.c.created_at).label("n"))
              .where(m.c.status == ledger.QUEUED, m.c.kind == "assignment", m.c.retry_at > now, *where)
              .subquery())
    free = (select(m.c.id).where(m.c.id.in_(select(ranked.c.id).where(ranked.c.n == 1)), m.c.status == ledger.QUEUED)
            .with_for_update(skip_locked=True))
    rows = conn.execute(update(m).where(m.c.id.in_(free)).values(retry_at=now).returning(m.c.id, m.c.shard)).all()
    return [(r.id, r.shard) for r in rows]
