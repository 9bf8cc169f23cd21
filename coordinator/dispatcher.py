"""``cogo-executor-dispatcher``: admits assignments under their run's budget, routes them to the worker
queue, and re-admits them after a retry backoff. Every decision is audited in ``bus_events``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, func, select

from bus import ledger, outcomes
from bus.celery_app import TASK_EXECUTE, TASK_WORK
from bus.envelope import parse_assignment
from bus.errors import CogoError
from bus.introspection import IntrospectionEvent, write
from bus.outbox import EARLY_TOLERANCE_S, Delivery, Publisher
from bus.routing import Route, execute_queue
from bus.schema import agent_messages as m
from bus.settings import Settings
from coordinator.policies import RunLedger, Verdict, admit
from coordinator.schema import runs

log = logging.getLogger(__name__)
RESERVING = (ledger.DISPATCHED, ledger.RUNNING, ledger.RETRY_WAIT)


class Dispatcher:
    """Handles ``cogo.execute`` messages."""

    def __init__(self, *, engine: Engine, publisher: Publisher, shards: int,
                 allowed_models: frozenset[str] | None = None, clock: Callable[[], float] = time.time):
        self.engine, self.publisher, self.shards, self.clock = engine, publisher, shards, clock
        self.allowed_models = allowed_models

    def handle(self, message_id: str) -> str:
        """Admit (or re-admit) one assignment; returns ``dispatched``, ``denied``, ``early`` or ``duplicate``."""
        now = self.clock()
        deliveries: list[Delivery] = []
        with self.engine.begin() as conn:
            row = conn.execute(select(m).where(m.c.id == message_id)).first()
            if row is None or row.status not in (ledger.QUEUED, ledger.RETRY_WAIT):
                return "duplicate"
            if row.status == ledger.RETRY_WAIT and (row.retry_at or 0) > now + EARLY_TOLERANCE_S:
                deliveries.append(Delivery(TASK_EXECUTE, execute_queue(row.run_id or "", self.shards), message_id,
                                           row.retry_at - now))
                outcome = "early"
            else:
                outcome = self._admit(conn, row, now, deliveries)
        if deliveries:
            self.publisher.send(deliveries)
        return outcome

    def _admit(self, conn, row: Any, now: float, deliveries: list[Delivery]) -> str:
        route = Route(row.service, row.role, row.shard, row.tenant)
        token = (row.payload or {}).get("__token", {})
        try:
            assignment = parse_assignment(row.payload)
            verdict = Verdict(True)
            if row.status == ledger.QUEUED:
                limits = _budgets(conn, row.run_id, exclude=row.id) or [RunLedger(budget=None)]
                for ledger_ in limits:
                    verdict = admit(assignment, ledger_, allowed_models=self.allowed_models)
                    if not verdict.admitted:
                        break
        except CogoError as exc:
            verdict = Verdict(False, exc.code, str(exc), exc.details)
        except Exception as exc:  # malformed data must fail this assignment, not loop through the reclaimer
            log.exception("admission of %s failed", row.id)
            verdict = Verdict(False, "policy.error", f"admission failed: {type(exc).__name__}: {exc}")
        if not verdict.admitted:
            self._deny(conn, row, verdict, token, now, deliveries)
            return "denied"
        retry = row.status == ledger.RETRY_WAIT
        if not ledger.move(conn, row.id, from_=(row.status,), to=ledger.DISPATCHED, now=now):
            return "duplicate"
        ledger.record(conn, [{"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant,
                              "kind": "execute_enqueued", "attempt": row.attempts + 1,
                              "detail": {"queue": route.queue, "retry": retry}}], now=now)
        if row.run_id:
            write(conn, [IntrospectionEvent("dispatch.assignment.admitted", row.run_id,
                                            {"assignment_id": row.id, "queue": route.queue,
                                             "attempt": row.attempts + 1, "retry": retry},
                                            token.get("token_id"), token.get("node_id"),
                                            token.get("parent_run_id"))], now=now)
        deliveries.append(Delivery(TASK_WORK, route.queue, row.id))
        return "dispatched"

    def _deny(self, conn, row: Any, verdict: Verdict, token: dict, now: float, deliveries: list[Delivery]) -> None:
        error = {"code": verdict.code, "message": verdict.reason, **({"detail": dict(verdict.detail)}
                                                                      if verdict.detail else {})}
        if not ledger.move(conn, row.id, from_=(row.status,), to=ledger.FAILED, now=now,
                           values={"last_error": f"{verdict.code}: {verdict.reason}", "last_error_at": now}):
            return
        kind = "budget_violation" if verdict.code.startswith("budget") else "policy_denied"
        ledger.record(conn, [{"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant, "kind": kind,
                              "attempt": row.attempts, "detail": error}], now=now)
        if row.run_id:
            write(conn, [IntrospectionEvent("dispatch.assignment.denied", row.run_id,
                                            {"assignment_id": row.id, **error},
                                            token.get("token_id"), token.get("node_id"),
                                            token.get("parent_run_id"))], now=now)
            deliveries.append(outcomes.report(conn, assignment_id=row.id, run_id=row.run_id, tenant=row.tenant,
                                              payload=row.payload, kind=outcomes.TASK_FAILED, now=now,
                                              shards=self.shards, body={"error": error, "attempts": row.attempts}))


def _budgets(conn, run_id: str | None, *, exclude: str) -> list[RunLedger]:
    """The limits an assignment of ``run_id`` must fit: its run's own budget and its root run's budget over
    the whole tree, so a child draws from its root's budget.

    The root run's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
    serialises writers), so two dispatchers cannot both admit the last of a budget.
    """
    if run_id is None:
        return []
    run = conn.execute(select(runs.c.budget, runs.c.root_run_id).where(runs.c.id == run_id)).first()
    if run is None:
        return []
    root_id = run.root_run_id or run_id
    root_budget = conn.execute(select(runs.c.budget).where(runs.c.id == root_id).with_for_update()).scalar()
    found = []
    if root_budget:
        found.append(_ledger_of(conn, root_budget, runs.c.root_run_id == root_id, exclude))
    if run.budget and root_id != run_id:
        found.append(_ledger_of(conn, run.budget, runs.c.id == run_id, exclude))
    return found


def _ledger_of(conn, budget: dict, which_runs, exclude: str) -> RunLedger:
    spent = conn.execute(select(func.coalesce(func.sum(runs.c.spent_tokens), 0),
                                func.coalesce(func.sum(runs.c.spent_cost_usd), 0.0)).where(which_runs)).one()
    tree = select(runs.c.id).where(which_runs).scalar_subquery()
    reserved = conn.execute(select(m.c.payload).where(m.c.run_id.in_(tree), m.c.kind == "assignment",
                                                      m.c.status.in_(RESERVING), m.c.id != exclude)).all()
    budgets = [r.payload.get("__assignment", {}).get("budget", {}) for r in reserved]
    return RunLedger(budget, int(spent[0]), float(spent[1]), sum(int(b.get("maxTokens", 0)) for b in budgets),
                     sum(float(b.get("maxCostUsd", 0)) for b in budgets))


def main(settings: Settings, name: str) -> None:
    """Run the dispatcher: consume ``orchestrator.execute.<shard>`` for every shard."""
    from bus.celery_app import make_celery
    from bus.consumer import run_consumer
    from bus.db import make_engine
    from ecosystem.processes import by_name

    dispatcher = Dispatcher(engine=make_engine(settings.database_url),
                            publisher=Publisher(make_celery(settings, name=f"{name}-producer")),
                            shards=settings.shards, allowed_models=settings.model_allow_list)
    run_consumer(settings, name=name, queues=by_name(name).queues(settings.shards), task_name=TASK_EXECUTE,
                 handle=dispatcher.handle)
