"""Settling spend: what settled assignments used is added to their run and, under budgets, moved from held to
spent on every counter above them (run budgets, ``coordinator/budgets.py``; period budgets,
``coordinator/admission/period.py``); what that frees wakes the assignments waiting for it.

One function, used wherever assignments are settled: the brain's step (``coordinator/apply.py``) and an
operator's re-queue of a dead letter (``coordinator/dead_letters.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select, update

from bus import ledger
from bus.celery_app import TASK_EXECUTE
from bus.envelope import Usage
from bus.outbox import Delivery
from bus.routing import execute_queue
from bus.schema import agent_messages as m
from coordinator import budgets
from coordinator.admission import period
from coordinator.admission.waiting import Waiting
from coordinator.schema import runs


def settle(conn: Connection, settled: Sequence[ledger.Settled], *, run_id: str | None, above: budgets.Chain | None,
           now: float, shard: int, waiting: Waiting | None = None) -> list[Delivery]:
    """Count ``settled`` (rows of ``run_id``, already moved to ``settled`` by the caller, once) as spent; returns
    the deliveries that wake what waited for the budget or the slots they held, to send after commit.

    Rows are written in the dispatcher's lock order: the run tree's root (locked by the caller), the run, the
    tenant's period rows, then this shard's waiting assignments (rows being admitted are passed over).
    """
    if not settled:
        return []
    spent = sum((s.usage for s in settled), Usage())
    if run_id is not None and (spent.tokens or spent.cost_usd):
        conn.execute(update(runs).where(runs.c.id == run_id).values(
            spent_tokens=runs.c.spent_tokens + spent.tokens, spent_cost_usd=runs.c.spent_cost_usd + spent.cost_usd))
    period.settle(conn, settled, now)
    woken = waiting.wake(conn, settled, now, shard) if waiting is not None else []
    if above is not None:  # only a budget defers for budget: a tree without one has none waiting
        budgets.settle(conn, above, settled)
        woken += _wake_budget_deferred(conn, above.root_id, now)
    return woken


def _wake_budget_deferred(conn: Connection, root_id: str, now: float) -> list[Delivery]:
    """What the tree's settled holds freed may now fit: its deferred assignments are asked again now."""
    tree = select(runs.c.id).where(runs.c.root_run_id == root_id)
    rows = conn.execute(update(m).where(m.c.run_id.in_(tree), m.c.kind == "assignment", m.c.status == ledger.QUEUED,
                                        m.c.retry_at > now)
                        .values(retry_at=now).returning(m.c.id, m.c.shard)).all()
    return [Delivery(TASK_EXECUTE, execute_queue(r.shard), r.id) for r in rows]
