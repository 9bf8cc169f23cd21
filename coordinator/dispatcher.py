"""``cogo-executor-dispatcher``: admits assignments under their run's budget, routes them to the worker
queue, and re-admits them after a retry backoff. Every decision is audited in ``bus_events``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, and_, bindparam, case, func, or_, select

from bus import faults, ledger, outcomes
from bus.celery_app import TASK_EXECUTE, TASK_WORK
from bus.envelope import ASSIGNMENT_KEY, AssignmentEnvelope, Budget, TokenRef
from bus.errors import BrokerUnavailable, CogoError
from bus.introspection import write
from bus.outbox import EARLY_TOLERANCE_S, Delivery, Publisher
from bus.routing import Route, execute_queue
from bus.schema import agent_messages as m
from bus.sql_trace import traced
from coordinator.policies import BudgetSnapshot, Verdict, admit
from coordinator.schema import runs

log = logging.getLogger(__name__)
MAY_SPEND = (ledger.DISPATCHED, ledger.RUNNING, ledger.RETRY_WAIT)
"""Admitted assignments whose attempts may still spend (with ``dead`` rows whose abandoned attempt still runs)."""
DEFER_MIN_S = 0.25
DEFER_MAX_S = 5.0
"""A deferred assignment is asked again after a delay doubling from ``DEFER_MIN_S`` up to ``DEFER_MAX_S``."""
WAITING_FOR_SHOWN = 20


class Dispatcher:
    """Handles ``cogo.execute`` messages."""

    def __init__(self, *, engine: Engine, publisher: Publisher, allowed_models: frozenset[str] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 sql_events: bool = False):
        self.engine, self.publisher, self.clock = engine, publisher, clock
        self.sql_events = sql_events
        self.allowed_models, self.sleep = allowed_models, sleep

    def handle(self, message_id: str) -> str:
        """Admit (or re-admit) one assignment; returns ``dispatched``, ``deferred``, ``denied``, ``early`` or
        ``duplicate``.

        Raises:
            LedgerUnavailable: the database stayed unreachable through every retry; the row is untouched and
                the reclaimer sends it again once the database is back.
        """
        outcome, deliveries = faults.retrying(lambda: self._handle(message_id), what=f"admission of {message_id}",
                                              sleep=self.sleep)
        if deliveries:
            try:
                self.publisher.send(deliveries)
            except BrokerUnavailable as exc:  # committed: the reclaimer sends what could not be sent
                log.warning("sending after admission of %s left to the reclaimer: %s", message_id, exc)
        return outcome

    def _handle(self, message_id: str) -> tuple[str, list[Delivery]]:
        now = self.clock()
        deliveries: list[Delivery] = []
        with self.engine.begin() as conn, traced(conn, self.sql_events) as trace:
            row = conn.execute(select(m).where(m.c.id == message_id)).first()
            if row is None or row.status not in (ledger.QUEUED, ledger.RETRY_WAIT):
                return "duplicate", []
            if (row.retry_at or 0) > now + EARLY_TOLERANCE_S:  # a retry's backoff or a deferral not yet over
                deliveries.append(Delivery(TASK_EXECUTE, execute_queue(row.shard), message_id,
                                           row.retry_at - now))
                return "early", deliveries
            outcome = self._admit(conn, row, now, deliveries)
            if trace is not None and row.run_id:
                write(conn, trace.events(row.run_id), now=now)
            return outcome, deliveries

    def _admit(self, conn, row: Any, now: float, deliveries: list[Delivery]) -> str:
        route = Route(row.service, row.role, row.shard, row.tenant)
        envelope = AssignmentEnvelope.of(row.payload)
        token = envelope.token
        try:
            verdict = self._verdict(conn, row, envelope, now)
        except Exception as exc:  # malformed data must fail this assignment, not loop through the reclaimer
            if faults.is_infrastructure(exc):  # not the assignment's fault: retried, never a denial
                raise
            if isinstance(exc, CogoError):
                verdict = Verdict(False, exc.code, str(exc), exc.details)
            else:
                log.exception("admission of %s failed", row.id)
                verdict = Verdict(False, "policy.error", f"admission failed: {type(exc).__name__}: {exc}")
        if verdict.deferred:
            return self._defer(conn, row, verdict, token, now, deliveries)
        if not verdict.admitted:
            self._deny(conn, row, verdict, token, now, deliveries)
            return "denied"
        retry = row.status == ledger.RETRY_WAIT
        # The backoff or deferral it waited out is over: a dispatched row's age is its own (the reclaimer's rule).
        if not ledger.move(conn, row.id, from_=(row.status,), to=ledger.DISPATCHED, now=now, values={"retry_at": None}):
            return "duplicate"
        ledger.record(conn, [{"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant,
                              "kind": "execute_enqueued", "attempt": row.attempts + 1,
                              "detail": {"queue": route.queue, "retry": retry}}], now=now)
        if row.run_id:
            write(conn, [token.event("dispatch.assignment.admitted", row.run_id,
                                     {"assignment_id": row.id, "queue": route.queue, "attempt": row.attempts + 1,
                                      "retry": retry})], now=now)
        deliveries.append(Delivery(TASK_WORK, route.queue, row.id))
        return "dispatched"

    def _verdict(self, conn, row: Any, envelope: AssignmentEnvelope, now: float) -> Verdict:
        """The admission verdict: a re-admission after a retry's backoff keeps the reservation it holds; a
        first admission must fit every budget of its run tree."""
        assignment = envelope.contract()
        if row.status != ledger.QUEUED:
            return Verdict(True)
        verdict = Verdict(True)
        for limit in _budgets(conn, row.run_id, exclude=row.id) or [BudgetSnapshot(budget=None)]:
            answer = admit(assignment, limit, allowed_models=self.allowed_models)
            if not answer.admitted and not answer.deferred:
                return answer  # a denial wins over a deferral: waiting would not help
            if answer.deferred and verdict.admitted:
                verdict = answer
        return verdict

    def _defer(self, conn, row: Any, verdict: Verdict, token: TokenRef, now: float, deliveries: list[Delivery]) -> str:
        """Leave the assignment queued and ask again after a doubling delay: the budget it needs is held by
        assignments in flight, which may end having spent less than they reserved."""
        first = row.retry_at is None
        delay_s = DEFER_MIN_S if first else min(DEFER_MAX_S, max(DEFER_MIN_S, 2 * (row.retry_at - row.updated_at)))
        if not ledger.defer(conn, row.id, retry_at=now + delay_s, now=now):
            return "duplicate"
        if first and row.run_id:  # said once: the later re-checks are the same wait
            detail = {**dict(verdict.detail or {}),
                      "waiting_for": _in_flight(conn, (verdict.detail or {}).get("run_id") or row.run_id, row.id)}
            ledger.record(conn, [{"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant,
                                  "kind": "execute_deferred", "attempt": row.attempts,
                                  "detail": {"code": verdict.code, "message": verdict.reason, **detail}}], now=now)
            write(conn, [token.event("dispatch.assignment.deferred", row.run_id,
                                     {"assignment_id": row.id, "reason": "budget", "code": verdict.code,
                                      "message": verdict.reason, "retry_in_ms": round(delay_s * 1000), **detail})],
                  now=now)
        deliveries.append(Delivery(TASK_EXECUTE, execute_queue(row.shard), row.id, delay_s))
        return "deferred"

    def _deny(self, conn, row: Any, verdict: Verdict, token: TokenRef, now: float, deliveries: list[Delivery]) -> None:
        error = verdict.problem().to_dict()
        if not ledger.move(conn, row.id, from_=(row.status,), to=ledger.FAILED, now=now,
                           values={"last_error": f"{verdict.code}: {verdict.reason}", "last_error_at": now}):
            return
        kind = "budget_violation" if verdict.code.startswith("budget") else "policy_denied"
        ledger.record(conn, [{"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant, "kind": kind,
                              "attempt": row.attempts, "detail": error}], now=now)
        if row.run_id:
            write(conn, [token.event("dispatch.assignment.denied", row.run_id, {"assignment_id": row.id, **error})],
                  now=now)
            deliveries.append(outcomes.report(conn, assignment_id=row.id, run_id=row.run_id, tenant=row.tenant,
                                              payload=row.payload, kind=outcomes.TASK_FAILED, now=now,
                                              shard=row.shard, body={"error": error, "attempts": row.attempts}))


def _may_spend():
    """Whether an assignment row may still spend: admitted and not final, or abandoned while an attempt ran."""
    return or_(m.c.status.in_(MAY_SPEND), and_(m.c.status == ledger.DEAD, m.c.lease_until.is_not(None)))


def _headroom(budget_key: str, usage, default: float):
    """What a row that may still spend could spend beyond its recorded usage: its budget (all attempts
    together) minus its usage, never below zero."""
    budget = func.coalesce(m.c.payload[(ASSIGNMENT_KEY, "budget", budget_key)].as_float(), default)
    return case((and_(_may_spend(), budget > usage), budget - usage), else_=0)


def _budgets(conn, run_id: str | None, *, exclude: str) -> list[BudgetSnapshot]:
    """Every budget an assignment of ``run_id`` must fit: its run's, each ancestor's that has one, its root's,
    each over the runs under it (so a child draws from every budget above it).

    The root run's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already
    serialises writers), so admissions in one tree are serial. What is held against the budgets is read in
    **one** statement — one snapshot — so an outcome settled concurrently (its usage moving from the
    assignment row to the run in one commit) is counted exactly once, never zero times.
    """
    if run_id is None:
        return []
    root_id = _budgeted_root(conn, run_id)
    if root_id is None:  # no budget above the assignment: nothing to hold it against, no lock to take
        return []
    conn.execute(select(runs.c.id).where(runs.c.id == root_id).with_for_update())
    rows = {r.id: r for r in conn.execute(_tree_statement(), {"root": root_id, "exclude": exclude})}
    children: dict[str, list[str]] = {}
    for r in rows.values():
        if r.parent_run_id in rows and r.id != root_id:
            children.setdefault(r.parent_run_id, []).append(r.id)
    found, node = [], rows.get(run_id)
    while node is not None:
        if node.budget:
            found.append(_snapshot_of(node.id, node.budget, _subtree(node.id, children), rows))
        node = rows.get(node.parent_run_id) if node.id != root_id else None
    return found


def _budgeted_root(conn, run_id: str) -> str | None:
    """The root of ``run_id``'s tree when the run or one of its ancestors has a budget, else None. A run's
    budget never changes once it exists, so this needs no lock: a tree without budgets admits without reading
    or locking anything else, whatever its width."""
    node: str | None = run_id
    budgeted, root = False, None
    while node is not None:
        row = conn.execute(select(runs.c.parent_run_id, runs.c.root_run_id, runs.c.budget)
                           .where(runs.c.id == node)).first()
        if row is None:
            return None
        budgeted = budgeted or bool(row.budget)
        root = row.root_run_id or node
        node = row.parent_run_id
    return root if budgeted else None


def _tree_statement():
    """Each run of a tree with its settled spend and, over its assignments not yet settled, their recorded
    usage, their headroom and how many may still spend."""
    unsettled = (select(m.c.run_id,
                        func.sum(m.c.usage_tokens).label("usage_tokens"),
                        func.sum(m.c.usage_cost_usd).label("usage_cost_usd"),
                        func.sum(_headroom("maxTokens", m.c.usage_tokens, Budget().max_tokens)).label("head_tokens"),
                        func.sum(_headroom("maxCostUsd", m.c.usage_cost_usd, Budget().max_cost_usd))
                        .label("head_cost_usd"),
                        func.sum(case((_may_spend(), 1), else_=0)).label("in_flight"))
                 .where(m.c.run_id.in_(select(runs.c.id).where(runs.c.root_run_id == bindparam("root"))),
                        m.c.kind == "assignment", m.c.status != ledger.SETTLED, m.c.id != bindparam("exclude"))
                 .group_by(m.c.run_id).subquery())
    return (select(runs.c.id, runs.c.parent_run_id, runs.c.budget, runs.c.spent_tokens, runs.c.spent_cost_usd,
                   unsettled.c.usage_tokens, unsettled.c.usage_cost_usd, unsettled.c.head_tokens,
                   unsettled.c.head_cost_usd, unsettled.c.in_flight)
            .select_from(runs.outerjoin(unsettled, unsettled.c.run_id == runs.c.id))
            .where(runs.c.root_run_id == bindparam("root")))


def _subtree(run_id: str, children: dict[str, list[str]]) -> list[str]:
    found, stack = [], [run_id]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(children.get(node, ()))
    return found


def _snapshot_of(run_id: str, budget: dict, members: list[str], rows: dict[str, Any]) -> BudgetSnapshot:
    def total(field: str) -> float:
        return sum(float(getattr(rows[r], field) or 0) for r in members)

    return BudgetSnapshot(budget, spent_tokens=int(total("spent_tokens")), spent_cost_usd=total("spent_cost_usd"),
                     reserved_tokens=int(total("head_tokens")), reserved_cost_usd=total("head_cost_usd"),
                     unsettled_tokens=int(total("usage_tokens")), unsettled_cost_usd=total("usage_cost_usd"),
                     run_id=run_id, in_flight=int(total("in_flight")))


def _in_flight(conn, run_id: str, exclude: str) -> list[str]:
    """Some of the assignments in flight under ``run_id``'s tree (for the deferral's explanation)."""
    tree = select(runs.c.id).where(runs.c.root_run_id == select(runs.c.root_run_id)
                                   .where(runs.c.id == run_id).scalar_subquery())
    return list(conn.execute(select(m.c.id).where(m.c.run_id.in_(tree), m.c.kind == "assignment", _may_spend(),
                                                  m.c.id != exclude).order_by(m.c.created_at)
                             .limit(WAITING_FOR_SHOWN)).scalars())
