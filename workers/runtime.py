"""The worker runtime: claim an assignment, run its handler under lease and TTL, write the outcome.

The outcome, its audit row and the brain event that reports it are one transaction, fenced by the
attempt number: a worker whose lease the reclaimer took back cannot overwrite the newer attempt.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from bus import faults, ledger, outcomes, tracing
from bus.agents import Agent, Presence
from bus.celery_app import TASK_EXECUTE
from bus.envelope import AssignmentEnvelope, Usage, check_json
from bus.errors import BrokerUnavailable, BudgetExceeded, CogoError, Problem, TTLExpired, WorkFailed
from bus.introspection import write
from bus.outbox import Delivery, Publisher
from bus.retry import RetryPolicy, compute_backoff
from bus.routing import execute_queue
from bus.settings import Settings
from workers.handler import Handler, WorkContext, WorkResult

log = logging.getLogger(__name__)
OUTCOME_RETRY = RetryPolicy(maximum_attempts=25, initial_interval_ms=100, backoff_coefficient=2.0,
                            maximum_interval_ms=1_000, jitter=0.2)
"""How long a finished attempt keeps trying to write its outcome through a database outage (≈ 20 s, retrying
at least every second, so that it writes as soon as the ledger is back)."""


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed (whether another attempt may help is the problem's ``retryable``), and the audit
    kind it is recorded under."""

    problem: Problem
    audit: str = "execute_failed"


def classify(exc: BaseException) -> Failure:
    """Map what a handler raised to a failure; unknown exceptions are retryable."""
    if isinstance(exc, BudgetExceeded):
        return Failure(Problem(exc.code, str(exc), False), "budget_violation")
    if isinstance(exc, TTLExpired):
        return Failure(Problem(exc.code, str(exc), True), "ttl_expired")
    if isinstance(exc, CogoError):
        return Failure(Problem(exc.code, str(exc), exc.retryable))
    tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return Failure(Problem("work.exception", tail, True))


def _over_budget(ctx: WorkContext) -> Failure | None:
    """An attempt whose metered usage broke its budget fails for good, whatever the handler raised: only a
    final outcome may carry usage past the budget, so what admission holds for unfinished work (its budget)
    is never less than what it spent."""
    try:
        ctx.check_budget()
    except BudgetExceeded as exc:
        return classify(exc)
    return None


class Runtime:
    """Runs assignments for a set of routes in this process."""

    def __init__(self, *, engine: Engine, publisher: Publisher, settings: Settings,
                 handlers: Mapping[tuple[str, str], Handler], clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random):
        self.engine, self.publisher, self.settings = engine, publisher, settings
        self.handlers, self.clock, self.rng = dict(handlers), clock, rng
        self.leases = LeaseKeeper(self)

    def handle(self, message_id: str) -> str:
        """Run one dispatched assignment; returns ``done``, ``retry``, ``failed``, ``held`` (a dead letter),
        ``duplicate`` or ``lost``."""
        tracer = tracing.active()
        started = tracer.clock_ns() if tracer is not None else 0
        now = self.clock()
        with self.engine.begin() as conn:
            claim = ledger.claim(conn, message_id, lease_s=self.settings.lease_s, now=now)
            if claim is None:
                return "duplicate"
            if claim.run_id:
                token = AssignmentEnvelope.of(claim.payload).token
                write(conn, [token.event("dispatch.assignment.started", claim.run_id,
                                         {"assignment_id": claim.id, "attempt": claim.attempt})], now=now)
        if tracer is not None:
            return self._traced(tracer, claim, started)
        result, failure, ctx = self._run(claim)
        return self._finish(claim, ctx, result, failure)

    def _traced(self, tracer: tracing.Tracing, claim: ledger.Claim, started_ns: int) -> str:
        """Tracing on: the attempt is a span (``cogo.work <service.role>``) under the admission's, current while the
        handler runs, and its outcome's report carries it (so is the next admission's parent, after a retry)."""
        route = f"{claim.route.service}.{claim.route.role}"
        envelope = AssignmentEnvelope.of(claim.payload)
        # No carried context (its admission was not traced): the run tree's root span is the parent.
        root = None if envelope.traceparent else tracing.root_run_of(self.engine, claim.run_id,
                                                                     envelope.token.parent_run_id)
        with tracer.span(f"cogo.work {route}", carrier=envelope.traceparent, root_run_id=root,
                         run_id=claim.run_id, tenant=claim.tenant, node=envelope.token.node_id, start_ns=started_ns,
                         attributes={"cogo.assignment_id": claim.id, "cogo.attempt": claim.attempt,
                                     "cogo.route": route}) as span:
            result, failure, ctx = self._run(claim)
            status = self._finish(claim, ctx, result, failure, tracing.traceparent(span))
            spent = ctx.usage if ctx is not None else claim.spent  # every attempt so far: this one's is the rest
            span.set_attributes({"cogo.outcome": status, "cogo.tokens": spent.tokens - claim.spent.tokens,
                                 "cogo.cost_usd": round(spent.cost_usd - claim.spent.cost_usd, 9)})
            if ctx is not None:
                span.set_attribute("cogo.model", ctx.assignment.model)
            if failure is not None:
                tracing.fail(span, failure.problem.code)
            return status

    def _run(self, claim: ledger.Claim) -> tuple[WorkResult | None, Failure | None, WorkContext | None]:
        envelope = AssignmentEnvelope.of(claim.payload)
        token = envelope.token
        try:
            assignment = envelope.contract()
            handler = self.handlers[(claim.route.service, claim.route.role)]
        except (CogoError, KeyError) as exc:
            return None, Failure(Problem("work.unroutable", f"cannot run {claim.route.queue}: {exc}")), None
        ctx = WorkContext(assignment_id=claim.id, run_id=claim.run_id, token_id=token.token_id,
                          node_id=token.node_id, tenant=claim.tenant, attempt=claim.attempt,
                          assignment=assignment, deadline=time.time() + assignment.ttl_ms / 1000,
                          artifacts_root=self.settings.artifacts_dir, llm_url=self.settings.llm_url,
                          llm_api_key=self.settings.llm_api_key, usage=claim.spent)
        try:
            with self.leases.hold(claim), _ttl_guard(ctx):
                result = handler(ctx, envelope.input or {})
            ctx.check_budget()  # a handler that swallowed BudgetExceeded does not get to succeed
            if not isinstance(result, WorkResult):
                raise WorkFailed(f"handler returned {type(result).__name__}, not WorkResult", retryable=False)
            check_json(result.output, where="output")  # hostile output never reaches the ledger
            return result, None, ctx
        except Exception as exc:  # every failure becomes data; the worker never dies of a handler
            return None, _over_budget(ctx) or classify(exc), ctx

    def _finish(self, claim: ledger.Claim, ctx: WorkContext | None, result: WorkResult | None,
                failure: Failure | None, traceparent: str | None = None) -> str:
        def write_outcome() -> tuple[str, Outcome]:
            outcome = Outcome(self, claim, ctx, traceparent)
            with self.engine.begin() as conn:
                if failure is None:
                    return outcome.done(conn, result), outcome
                if failure.problem.retryable and claim.attempt < claim.max_attempts:
                    return outcome.retry(conn, failure), outcome
                return outcome.failed(conn, failure), outcome

        # A finished attempt is not given up for a database outage: its outcome is written again with backoff,
        # and its lease kept (renewed as soon as the ledger answers), so the work is not done twice.
        with self.leases.hold(claim):
            status, outcome = faults.retrying(write_outcome, what=f"the outcome of {claim.id}", policy=OUTCOME_RETRY)
        try:
            self.publisher.send(outcome.deliveries)
        except BrokerUnavailable as exc:  # committed: the reclaimer sends what could not be sent now
            log.warning("the report of %s is left to the reclaimer: %s", claim.id, exc)
        return status


class Outcome:
    """Writes one attempt's end: the fenced status change, its audit rows, its trace and its report."""

    def __init__(self, runtime: Runtime, claim: ledger.Claim, ctx: WorkContext | None,
                 traceparent: str | None = None):
        self.runtime, self.claim, self.now = runtime, claim, runtime.clock()
        self.traceparent = traceparent  # the attempt's span (tracing on): its report and its retry carry it
        total = ctx.usage if ctx else claim.spent  # every attempt so far, this one included
        self.usage = total.model_dump()
        self.usage_values = {"usage_tokens": total.tokens, "usage_cost_usd": total.cost_usd}
        self.envelope = AssignmentEnvelope.of(claim.payload)
        self.token = self.envelope.token
        self.deliveries: list[Delivery] = []

    def done(self, conn, result: WorkResult) -> str:
        """``running → done``, audited, traced and reported to the brain."""
        if not self._move(conn, ledger.DONE, {"result_snippet": ledger.snippet(result.output),
                                              "result_url": result.result_url}):
            return "lost"
        self._audit(conn, [("execute_done", {"usage": self.usage, **self._end("done")})])
        self._trace(conn, "dispatch.assignment.completed", usage=self.usage)
        self._report(conn, outcomes.TASK_COMPLETED, {"output": result.output})
        return "done"

    def retry(self, conn, failure: Failure) -> str:
        """``running → retry_wait`` with a backoff; the dispatcher re-admits it when due."""
        policy = self.envelope.retry_policy(self.claim.max_attempts)
        backoff_ms = compute_backoff(self.claim.attempt, policy, self.runtime.rng)
        retry_at = self.now + backoff_ms / 1000
        carry = {} if self.traceparent is None else {"payload": tracing.carrying(self.claim.payload, self.traceparent)}
        if not self._move(conn, ledger.RETRY_WAIT, {"retry_at": retry_at, "lease_until": None,
                                                     **_error(failure, self.now), **carry}):
            return "lost"
        self._audit(conn, [(failure.audit, failure.problem.to_dict()),
                           ("execute_retry", {"backoff_ms": backoff_ms, **self._end("retry")})])
        self._trace(conn, "dispatch.attempt.failed", error=failure.problem.to_dict())
        self._trace(conn, "dispatch.retry.scheduled", backoff_ms=backoff_ms, next_attempt=self.claim.attempt + 1,
                    max_attempts=self.claim.max_attempts)
        queue = execute_queue(self.claim.route.shard)
        self.deliveries.append(Delivery(TASK_EXECUTE, queue, self.claim.id, backoff_ms / 1000))
        return "retry"

    def failed(self, conn, failure: Failure) -> str:
        """``running → failed`` for good, audited, traced and reported to the brain; or, when its retry policy (or
        ``COGO_DEAD_LETTER``) holds dead letters, ``running → dead`` held for an operator and not reported: its run
        waits for it (``coordinator/dead_letters.py``). ``lease_until`` is cleared, so the reclaimer never takes a
        held letter for an abandoned attempt."""
        hold = self.envelope.holds_dead_letter(self.runtime.settings.dead_letter)
        values = {"lease_until": None, "dead_letter": ledger.HELD_LETTER} if hold else {}
        if not self._move(conn, ledger.DEAD if hold else ledger.FAILED, {**_error(failure, self.now), **values}):
            return "lost"
        error = failure.problem.to_dict()
        kinds = [failure.audit] + (["execute_failed"] if failure.audit != "execute_failed" else [])
        end = self._end("held" if hold else "failed")  # held: the assignment has not ended, its run waits
        self._audit(conn, [(k, {**error, **end} if k == "execute_failed" else error) for k in kinds]
                    + ([("dead_letter_held", {"error": error, "attempts": self.claim.attempt, **self._route()})]
                       if hold else []))
        if hold:
            self._trace(conn, "dispatch.assignment.dead_lettered", error=error)
            return "held"
        self._trace(conn, "dispatch.assignment.failed", error=error)
        self._report(conn, outcomes.TASK_FAILED, {"error": error})
        return "failed"

    def _move(self, conn, to: str, values: dict[str, Any]) -> bool:
        """The fenced move; when it is refused because the assignment was abandoned while this attempt ran,
        record what the attempt spent on the abandoned row and report it, so the brain settles it. Any other
        refusal is a late write (this attempt lost its lease and another took over): audited, then dropped."""
        if ledger.move(conn, self.claim.id, from_=(ledger.RUNNING,), to=to, now=self.now,
                       attempt=self.claim.attempt, values={**values, **self.usage_values}):
            return True
        if ledger.close_abandoned(conn, self.claim.id, attempt=self.claim.attempt, now=self.now,
                                  usage=Usage(**self.usage)):
            self._audit(conn, [("execute_abandoned", {"usage": self.usage})])
            self._report(conn, outcomes.TASK_FAILED, {"error": Problem(
                "execute.abandoned", "its token ended while the attempt ran").to_dict()})
        else:
            log.warning("attempt %d of %s ended after it lost its lease: its outcome (%s) is dropped",
                        self.claim.attempt, self.claim.id, to)
            self._audit(conn, [("execute_fenced", {"to": to})])
        return False

    def _audit(self, conn, kinds: list[tuple[str, dict]]) -> None:
        c = self.claim
        ledger.record(conn, [{"message_id": c.id, "run_id": c.run_id, "tenant": c.tenant, "attempt": c.attempt,
                              "kind": kind, "detail": detail} for kind, detail in kinds], now=self.now)

    def _route(self) -> dict[str, str]:
        return {"route": f"{self.claim.route.service}.{self.claim.route.role}"}

    def _end(self, end: str) -> dict[str, Any]:
        """What the row that closes an attempt adds (``coordinator/metrics`` folds it, with no pairing): its route and
        model, how the attempt ended (``done``, ``retry``, ``failed``, ``held``: kept as a dead letter), how long it
        waited in its worker queue (``wait_s``: dispatched → claimed) and how long it ran (``run_s``: claimed → this
        outcome)."""
        wait_s = self.claim.wait_s
        waited = {"wait_s": wait_s} if wait_s is not None else {}
        return {**self._route(), "model": ledger.model_of(self.claim.payload), "end": end,
                "run_s": max(0.0, self.now - self.claim.claimed_at), **waited}

    def _trace(self, conn, type_: str, **data: Any) -> None:
        if self.claim.run_id:
            write(conn, [self.token.event(type_, self.claim.run_id,
                                          {"assignment_id": self.claim.id, "attempt": self.claim.attempt, **data})],
                  now=self.now)

    def _report(self, conn, kind: str, body: dict[str, Any]) -> None:
        c = self.claim
        if c.run_id:
            self.deliveries.append(outcomes.report(
                conn, assignment_id=c.id, run_id=c.run_id, tenant=c.tenant, payload=c.payload, kind=kind,
                now=self.now, shard=self.claim.route.shard,
                body={**body, "attempts": c.attempt, "usage": self.usage}, traceparent=self.traceparent))


def _error(failure: Failure, now: float) -> dict[str, Any]:
    return {"last_error": f"{failure.problem.code}: {failure.problem.message}", "last_error_at": now}


class LeaseKeeper:
    """Renews the lease of every attempt running in this process, each a third of ``lease_s`` after the last.

    One thread serves them all, started with the first attempt and ended once none is left: starting a
    thread per attempt cost ~0.4 ms, more than a no-op handler's whole attempt.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.interval_s = runtime.settings.lease_s / 3
        self._held: dict[str, tuple[ledger.Claim, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def hold(self, claim: ledger.Claim) -> Iterator[None]:
        """Keep ``claim``'s lease alive while the block runs."""
        with self._lock:
            self._held[claim.id] = (claim, time.monotonic() + self.interval_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(claim.id, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                now = time.monotonic()
                due = min(at for _, at in self._held.values())
            time.sleep(max(0.0, min(due - now, self.interval_s / 2)))
            with self._lock:
                now = time.monotonic()
                ready = [claim for claim, at in self._held.values() if at <= now]
            for claim in ready:
                self._renew(claim, now)

    def _renew(self, claim: ledger.Claim, now: float) -> None:
        keep = True
        try:
            with self.runtime.engine.begin() as conn:
                keep = ledger.renew_lease(conn, claim.id, attempt=claim.attempt, lease_s=self.runtime.settings.lease_s,
                                          now=self.runtime.clock())
        except Exception as exc:  # a missed renewal only risks a duplicate attempt, fenced later
            log.warning("lease renewal of %s failed: %s", claim.id, exc)
        with self._lock:
            if self._held.get(claim.id, (None,))[0] is claim:  # still this attempt's hold
                if keep:
                    self._held[claim.id] = (claim, now + self.interval_s)
                else:  # the attempt is no longer the current one: stop renewing it
                    del self._held[claim.id]


@contextlib.contextmanager
def _ttl_guard(ctx: WorkContext) -> Iterator[None]:
    """Interrupt the handler with TTLExpired when ``ttl_ms`` runs out (main thread only: the solo pool)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise TTLExpired(f"assignment {ctx.assignment_id} ran past its ttl_ms={ctx.assignment.ttl_ms}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(ctx.remaining_s(), 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def serve(settings: Settings, *, name: str, handlers: Mapping[tuple[str, str], Handler],
          spawn: Sequence[str] | None = None) -> None:
    """Run a worker process consuming the queues of ``handlers``' routes on every shard; with ``spawn`` (the
    command line of this worker), each assignment runs in a fresh child started with it (``workers/ephemeral.py``)."""
    from bus.celery_app import TASK_WORK, make_celery
    from bus.consumer import run_consumer
    from bus.db import make_engine
    from bus.routing import queue_name

    runtime = Runtime(engine=make_engine(settings.database_url),
                      publisher=Publisher(make_celery(settings, name=f"{name}-producer")),
                      settings=settings, handlers=handlers)
    queues = [queue_name(s, r, shard) for (s, r) in handlers for shard in range(settings.shards)]
    handle = runtime.handle
    if spawn is not None:
        from workers.ephemeral import Spawner

        handle = Spawner(engine=runtime.engine, settings=settings, command=spawn).handle
    presence = Presence(runtime.engine, agent_of(settings, name, handlers)).start()
    try:
        run_consumer(settings, name=name, queues=queues, task_name=TASK_WORK, handle=presence.track(handle))
    finally:  # a clean stop (SIGTERM) says so; a kill -9 just stops heartbeating and is shown gone
        presence.stop()


def agent_of(settings: Settings, name: str, handlers: Mapping[tuple[str, str], Handler]) -> Agent:
    """How a worker process serving ``handlers`` registers: its routes, the models the operator allows (any when
    the list is empty), one assignment at a time (the solo pool)."""
    return Agent(name, routes=tuple(f"{s}.{r}" for s, r in handlers),
                 models=tuple(sorted(settings.model_allow_list or ())), heartbeat_s=settings.agent_heartbeat_s)
