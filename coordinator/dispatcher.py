"""``cogo-executor-dispatcher``: admits assignments under its admission policies (``coordinator/admission/``),
routes them to the worker queue, and re-admits them after a retry backoff. Every decision is audited in
``bus_events``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from sqlalchemy import Engine, bindparam, select

from bus import faults, ledger, outcomes, tracing
from bus.celery_app import TASK_EXECUTE, TASK_WORK
from bus.envelope import AssignmentEnvelope, Budget, TokenRef
from bus.errors import BrokerUnavailable, CogoError
from bus.introspection import IntrospectionEvent, write
from bus.outbox import EARLY_TOLERANCE_S, Delivery, Publisher
from bus.routing import Route, execute_queue
from bus.schema import agent_messages as m
from bus.settings import Settings
from bus.sql_trace import traced
from coordinator import budgets
from coordinator.admission import Ask, Policy, Setup, Verdict, admitted, build, evaluate, prepare
from coordinator.admission.budgets import BudgetSnapshot
from coordinator.schema import runs

log = logging.getLogger(__name__)
MAY_SPEND = (ledger.DISPATCHED, ledger.RUNNING, ledger.RETRY_WAIT)
"""Admitted assignments whose attempts may still spend."""
DEFER_MIN_S = 0.25
DEFER_MAX_S = 5.0
"""A deferred assignment is asked again after a delay doubling from ``DEFER_MIN_S`` up to ``DEFER_MAX_S``."""
DEFER_UNTIL_MAX_S = 60.0
"""One deferred until a time (the next period, a circuit's probe) is asked again by then, or after this long if that
is later, so an operator's change (a raised limit) is seen within a minute."""
WAITING_FOR_SHOWN = 20


@dataclass
class _Written:
    """What one admission transaction sends after it commits and the rows it writes last, in one statement
    each (audit rows, trace events): a batch writes in the order one at a time would."""

    deliveries: list[Delivery] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    events: list[IntrospectionEvent] = field(default_factory=list)
    chains: dict[str | None, budgets.Chain | None] = field(default_factory=dict)
    limits: dict[str, dict[str, BudgetSnapshot]] = field(default_factory=dict)
    """Root run id → its budgets read in this transaction, kept up to date with the reservations it makes: the
    root stays locked until commit, so no other admission or settlement changes them; a worker's outcome
    committed meanwhile turns a hold into its usage, no more than its budget (but for the one metered call
    that broke it, which no admission can prevent), so the kept snapshot is the more careful one."""

    def budgets_above(self, conn, above: budgets.Chain) -> list[BudgetSnapshot]:
        """The budgets above an assignment: read (and the root locked) once per root and transaction."""
        kept = self.limits.get(above.root_id)
        if kept is None:
            budgets.lock_root(conn, above)
            kept = self.limits[above.root_id] = {}
        missing = tuple(b for b in above.budgeted if b not in kept)
        if missing:
            kept.update((s.run_id, s) for s in budgets.snapshots(conn, replace(above, budgeted=missing)))
        return [kept[b] for b in above.budgeted]

    def reserved(self, above: budgets.Chain, budget: Budget) -> None:
        """Count a reservation just made in the kept snapshots."""
        kept = self.limits[above.root_id]
        for b in above.budgeted:
            s = kept[b]
            kept[b] = replace(s, reserved_tokens=s.reserved_tokens + budget.max_tokens,
                              reserved_cost_usd=s.reserved_cost_usd + budget.max_cost_usd, in_flight=s.in_flight + 1)

    def chain(self, conn, row: Any) -> budgets.Chain | None:
        """The budgets above ``row``'s run, read once per run and transaction (they never change)."""
        if row.run_id not in self.chains:
            first = _RunOf(row.run_parent_run_id, row.run_root_run_id, row.run_budget) if row.run_found else None
            self.chains[row.run_id] = budgets.chain(conn, row.run_id, first=first)
        return self.chains[row.run_id]


class _RunOf(NamedTuple):
    parent_run_id: str | None
    root_run_id: str | None
    budget: Any


_ROWS = (select(m, runs.c.parent_run_id.label("run_parent_run_id"), runs.c.root_run_id.label("run_root_run_id"),
                runs.c.budget.label("run_budget"), runs.c.id.is_not(None).label("run_found"))
         .select_from(m.outerjoin(runs, runs.c.id == m.c.run_id))
         .where(m.c.id.in_(bindparam("ids", expanding=True))))
"""The assignments of one message, each with its run's place in its tree (what admission needs first)."""


class Dispatcher:
    """Handles ``cogo.execute`` messages."""

    def __init__(self, *, engine: Engine, publisher: Publisher, policies: Sequence[Policy] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 sql_events: bool = False):
        """``policies``: the admission policies in order (default: the run tree's budgets only)."""
        self.engine, self.publisher, self.clock = engine, publisher, clock
        self.sql_events = sql_events
        self.policies = list(policies) if policies is not None else build(Setup(Settings()), ["budgets"])
        self.sleep = sleep

    def handle(self, message_id: str) -> str:
        """Admit (or re-admit) one assignment; returns ``dispatched``, ``deferred``, ``denied``, ``early`` or
        ``duplicate``.

        Raises:
            LedgerUnavailable: the database stayed unreachable through every retry; the row is untouched and
                the reclaimer sends it again once the database is back.
        """
        return self.handle_batch([message_id])[0]

    def handle_batch(self, message_ids: Sequence[str]) -> list[str]:
        """Admit the assignments of one message (a step's fan-out comes as one, ``bus.outbox.BATCHED``) in
        one transaction, one after the other in the order given, exactly as one at a time would; returns each
        one's outcome. With ``sql_events`` on, each gets its own transaction, so its statements are its own."""
        if self.sql_events and len(message_ids) > 1:
            return [self.handle(message_id) for message_id in message_ids]
        what = f"admission of {message_ids[0]}" + (f" and {len(message_ids) - 1} more" if len(message_ids) > 1 else "")
        results, deliveries = faults.retrying(lambda: self._handle(message_ids), what=what, sleep=self.sleep)
        if deliveries:
            try:
                self.publisher.send(deliveries)
            except BrokerUnavailable as exc:  # committed: the reclaimer sends what could not be sent
                log.warning("sending after %s left to the reclaimer: %s", what, exc)
        return results

    def _handle(self, message_ids: Sequence[str]) -> tuple[list[str], list[Delivery]]:
        now = self.clock()
        out = _Written()
        with self.engine.begin() as conn, traced(conn, self.sql_events) as trace:
            rows = {r.id: r for r in conn.execute(_ROWS, {"ids": list(message_ids)})}
            prepare(self.policies, conn, list(rows.values()), now)
            results = [self._one(conn, rows.get(message_id), now, out) for message_id in message_ids]
            row = rows.get(message_ids[0])
            if trace is not None and row is not None and row.run_id and results[0] not in ("duplicate", "early"):
                out.events += trace.events(row.run_id)  # sql_events: one assignment per transaction
            ledger.record(conn, out.audit, now=now)  # the batch's audit rows and events, one statement each
            write(conn, out.events, now=now)
            return results, out.deliveries

    def _one(self, conn, row: Any, now: float, out: _Written) -> str:
        if row is None or row.status not in (ledger.QUEUED, ledger.RETRY_WAIT):
            return "duplicate"
        if (row.retry_at or 0) > now + EARLY_TOLERANCE_S:  # a retry's backoff or a deferral not yet over
            out.deliveries.append(Delivery(TASK_EXECUTE, execute_queue(row.shard), row.id, row.retry_at - now))
            return "early"
        tracer = tracing.active()
        if tracer is None:
            return self._admit(conn, row, now, out)
        # Tracing on: each admission of a batch is a span of its own, opened once the policies answered (_Admission).
        with contextlib.ExitStack() as stack:
            traced = _Admission(tracer, row, now, stack)
            outcome = self._admit(conn, row, now, out, traced)
            if traced.span is not None:
                traced.span.set_attribute("cogo.outcome", outcome)
            return outcome

    def _admit(self, conn, row: Any, now: float, out: _Written, traced: _Admission | None = None) -> str:
        """Ask the policies and act on their answer; ``traced`` (tracing on) opens the admission's span with the
        answer, and the worker's and a denial's report carry its context."""
        route = Route(row.service, row.role, row.shard, row.tenant)
        envelope = AssignmentEnvelope.of(row.payload)
        token = envelope.token
        above = None
        try:
            contract = envelope.contract()
            above = out.chain(conn, row) if row.status == ledger.QUEUED else None
            # A first admission must fit every budget above it (read with the tree's root locked); a
            # re-admission after a retry's backoff keeps the reservation it holds.
            ask = Ask(conn, row, contract, now, first=row.status == ledger.QUEUED,
                      budgets=out.budgets_above(conn, above) if above else ())
            verdict = evaluate(self.policies, ask)
            out.deliveries += [Delivery(TASK_EXECUTE, execute_queue(shard), i) for i, shard in ask.woken]
        except Exception as exc:  # malformed data must fail this assignment, not loop through the reclaimer
            if faults.is_infrastructure(exc):  # not the assignment's fault: retried, never a denial
                raise
            if isinstance(exc, CogoError):
                verdict = Verdict(False, exc.code, str(exc), exc.details)
            else:
                log.exception("admission of %s failed", row.id)
                verdict = Verdict(False, "policy.error", f"admission failed: {type(exc).__name__}: {exc}")
        span = None if traced is None else traced.answered(verdict)
        if verdict.deferred:
            return self._defer(conn, row, verdict, token, now, out)
        if not verdict.admitted:
            self._deny(conn, row, verdict, token, now, out, span)
            return "denied"
        retry = row.status == ledger.RETRY_WAIT
        # The backoff or deferral it waited out is over: a dispatched row's age is its own (the reclaimer's rule).
        budget = contract.budget
        held = budgets.holding(budget) if above is not None else {}  # held by the row until it is settled
        if not ledger.move(conn, row.id, from_=(row.status,), to=ledger.DISPATCHED, now=now,
                           values={"retry_at": None, "waiting_for": None, "waiting_since": None, **held,
                                   "dispatched_at": now, **_carrying(row.payload, span)}):
            return "duplicate"
        if above is not None:
            budgets.reserve(conn, above, budget)
            out.reserved(above, budget)
        admitted(self.policies, ask)
        out.audit.append({"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant,
                          "kind": "execute_enqueued", "attempt": row.attempts + 1,
                          "detail": {"queue": route.queue, "retry": retry}})
        if row.run_id:
            out.events.append(token.event("dispatch.assignment.admitted", row.run_id,
                                          {"assignment_id": row.id, "queue": route.queue,
                                           "attempt": row.attempts + 1, "retry": retry}))
        out.deliveries.append(Delivery(TASK_WORK, route.queue, row.id))
        return "dispatched"

    def _defer(self, conn, row: Any, verdict: Verdict, token: TokenRef, now: float, out: _Written) -> str:
        """Leave the assignment where it is (``queued``, or ``retry_wait``: no attempt and no budget consumed)
        and ask again at the verdict's time, or after a delay as long as it has waited so far (doubling, from
        ``DEFER_MIN_S`` up to ``DEFER_MAX_S``). The row keeps what it waits for (``waiting_for``, the code) and
        since when; that is said when a wait starts and when what it waits for changes (``_kind``), not at every
        re-check."""
        same = _same_wait(row, verdict.code)
        since = row.waiting_since if same and row.waiting_since is not None else now
        if verdict.until is not None:
            delay_s = min(DEFER_UNTIL_MAX_S, max(DEFER_MIN_S / 10, verdict.until - now))
        else:
            delay_s = min(DEFER_MAX_S, max(DEFER_MIN_S, now - since))
        if not ledger.defer(conn, row.id, from_=row.status, retry_at=now + delay_s, now=now,
                            waiting_for=verdict.code, waiting_since=since):
            return "duplicate"
        if row.run_id and not same:
            detail = dict(verdict.detail or {})
            if verdict.code == "budget.deferred":
                detail["waiting_for"] = _in_flight(conn, detail.get("run_id") or row.run_id, row.id)
            out.audit.append({"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant,
                              "kind": "execute_deferred", "attempt": row.attempts,
                              "detail": {"code": verdict.code, "message": verdict.reason, **detail}})
            out.events.append(token.event("dispatch.assignment.deferred", row.run_id,
                                          {"assignment_id": row.id, "reason": verdict.code.partition(".")[0],
                                           "code": verdict.code, "message": verdict.reason,
                                           "retry_in_ms": round(delay_s * 1000), **detail}))
        out.deliveries.append(Delivery(TASK_EXECUTE, execute_queue(row.shard), row.id, delay_s))
        return "deferred"

    def _deny(self, conn, row: Any, verdict: Verdict, token: TokenRef, now: float, out: _Written,
              span: Any = None) -> None:
        error = verdict.problem().to_dict()
        if not ledger.move(conn, row.id, from_=(row.status,), to=ledger.FAILED, now=now,
                           values={"last_error": f"{verdict.code}: {verdict.reason}", "last_error_at": now}):
            return
        kind = "budget_violation" if verdict.code.startswith("budget") else "policy_denied"
        # ``route`` and ``end``: the assignment ended here, denied (``coordinator/metrics`` counts it).
        out.audit.append({"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant, "kind": kind,
                          "attempt": row.attempts,
                          "detail": {**error, "route": f"{row.service}.{row.role}", "end": "denied"}})
        if row.run_id:
            out.events.append(token.event("dispatch.assignment.denied", row.run_id, {"assignment_id": row.id, **error}))
            out.deliveries.append(outcomes.report(conn, assignment_id=row.id, run_id=row.run_id, tenant=row.tenant,
                                                  payload=row.payload, kind=outcomes.TASK_FAILED, now=now,
                                                  shard=row.shard, body={"error": error, "attempts": row.attempts},
                                                  traceparent=None if span is None else tracing.traceparent(span)))


_NOTHING: dict[str, Any] = {}


def _carrying(payload: Any, span: Any) -> dict[str, Any]:
    """Tracing on, what an admitted row's payload becomes: it carries the admission's span, so the worker's span
    is its child. Off: nothing to change."""
    return _NOTHING if span is None else {"payload": tracing.carrying(payload, tracing.traceparent(span))}


class _Admission:
    """Tracing on, one admission's span (``cogo.admit``), under the context its row carries: opened once the
    policies answered (its start: before they were asked) — for an admission or a denial, and for a deferral only
    when a wait starts or what it waits for changes (the rule that writes the ``deferred`` event). A re-check of the
    same wait opens none, so an assignment deferred for minutes adds one span, not one per re-check; the
    admission that ends a wait says what it waited for and for how long (``cogo.waited_for``, ``cogo.waited_s``)."""

    def __init__(self, tracer: tracing.Tracing, row: Any, now: float, stack: contextlib.ExitStack):
        self.tracer, self.row, self.now, self.stack = tracer, row, now, stack
        self.started = tracer.clock_ns()
        self.span: Any = None

    def answered(self, verdict: Verdict) -> Any:
        """The span that hears ``verdict``, open until the admission ends; None for a re-check of the same wait."""
        row = self.row
        if verdict.deferred and _same_wait(row, verdict.code):
            return None
        attributes = {"cogo.assignment_id": row.id, "cogo.route": f"{row.service}.{row.role}",
                      "cogo.attempt": row.attempts + 1}
        if row.waiting_for is not None and not verdict.deferred:
            attributes["cogo.waited_for"] = row.waiting_for
            if row.waiting_since is not None:
                attributes["cogo.waited_s"] = round(max(0.0, self.now - row.waiting_since), 3)
        self.span = self.stack.enter_context(self.tracer.span(
            "cogo.admit", carrier=tracing.carried(row.payload), root_run_id=row.run_root_run_id or row.run_id,
            run_id=row.run_id, tenant=row.tenant, node=AssignmentEnvelope.of(row.payload).token.node_id,
            start_ns=self.started, attributes=attributes))
        _answered(self.span, verdict)
        return self.span


def _same_wait(row: Any, code: str) -> bool:
    """Whether deferring ``row`` for ``code`` goes on with the wait it is in (rather than starting one)."""
    return row.waiting_for is not None and _kind(row.waiting_for) == _kind(code)


def _answered(span: Any, verdict: Verdict) -> None:
    """What the policies answered, on the admission's span: a denial's code is its error."""
    if verdict.code:
        span.set_attribute("cogo.verdict", verdict.code)
    if not verdict.admitted and not verdict.deferred:
        tracing.fail(span, verdict.code)


ONE_WAIT = frozenset({"concurrency", "agents"})
"""Families of deferral codes that are one wait whatever the code says at each ask: a slot (at the limit, or
yielding it to a tenant with a lower share), a live agent (none, or none serving the model)."""


def _kind(code: str) -> str:
    """Which wait a deferral code is: its family for ``ONE_WAIT``, else the code itself."""
    family = code.partition(".")[0]
    return family if family in ONE_WAIT else code


def _in_flight(conn, run_id: str, exclude: str) -> list[str]:
    """Some of the assignments in flight under ``run_id``'s tree (for the deferral's explanation)."""
    tree = select(runs.c.id).where(runs.c.root_run_id == select(runs.c.root_run_id)
                                   .where(runs.c.id == run_id).scalar_subquery())
    return list(conn.execute(select(m.c.id).where(m.c.run_id.in_(tree), m.c.kind == "assignment",
                                                  m.c.held_tokens.is_not(None), m.c.status.in_(MAY_SPEND),
                                                  m.c.id != exclude).order_by(m.c.created_at)
                             .limit(WAITING_FOR_SHOWN)).scalars())
