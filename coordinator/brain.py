"""``cogo-orchestrator-brain``: for each decide row, load state → plan → phase 1 → commit → phase 2.

The decide row's own conditional ``queued → done`` is the inbox: it is the first write of the
transaction, so a duplicate delivery (or a second brain on the same shard) changes nothing. Under load one
transaction applies many rows (``BATCH_AFTER_S``): the message is the doorbell, the ledger the queue.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, bindparam, or_, select, update

from bus import faults, ledger, tracing
from bus.celery_app import TASK_DECIDE
from bus.errors import BrokerUnavailable, CogoError, Conflict, Problem
from bus.outbox import BATCH_MAX, EARLY_TOLERANCE_S, Delivery, Publisher
from bus.routing import DECIDE, ORCHESTRATOR, decide_queue
from bus.schema import agent_messages as m
from bus.sql_trace import traced
from coordinator import commands
from coordinator import events as ev
from coordinator.admission.waiting import Waiting
from coordinator.apply import Effects, Phase1, phase2
from coordinator.definitions import Registry
from coordinator.planning import plan
from coordinator.planning.working import NeedsWholeState
from coordinator.schema import runs
from coordinator.state import RUN_FAILED, RUN_TERMINAL
from coordinator.store import load_state

log = logging.getLogger(__name__)
MAX_CONFLICT_RETRIES = 8
MAX_CRASHES = 5
BATCH_AFTER_S = 0.02
"""A decide row taken this long after it was due means a queue is forming on the shard: the transaction that
applies it applies the shard's other due rows too (the Celery message is the doorbell, the ledger the queue),
up to ``BATCH_MAX`` in all. An idle fleet takes one row per transaction and reads nothing more."""
RECENT_MAX = 100_000


class Brain:
    """Applies brain events; one instance per process."""

    def __init__(self, *, engine: Engine, publisher: Publisher, registry: Registry, shards: int,
                 notify: Callable[[str, Any], None] | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, fail_fast: bool = False, sql_events: bool = False,
                 batch_after_s: float | None = BATCH_AFTER_S, waiting: Waiting | None = None):
        self.engine, self.publisher, self.registry, self.shards = engine, publisher, registry, shards
        self.notify, self.clock, self.sleep = notify, clock, sleep
        self.fail_fast = fail_fast  # tests: a planner bug raises in the test instead of crashing the run
        self.sql_events = sql_events
        self.batch_after_s = batch_after_s  # None: apply only the rows a message carries
        self.waiting = waiting  # concurrency limits: wake what waits for a slot a settlement frees
        self._applied = _Recent(RECENT_MAX)
        """Rows this process took from the ledger in a batch: their own messages, when they come, are done."""

    def handle(self, message_id: str) -> str:
        """Apply one decide row; returns what happened (``applied``, ``duplicate``, ``early``, ``crashed``,
        ``rejected``). When the row waited in the queue (``batch_after_s``), the same transaction applies the
        shard's other due rows too, each in a savepoint: one that fails rolls back alone and is handled as if it
        had come on its own.

        Raises:
            LedgerUnavailable: the database stayed unreachable through every retry; the row is still
                ``queued`` and uncounted, so the reclaimer sends it again once the database is back.
        """
        if message_id in self._applied:  # taken from the ledger by an earlier batch: its message is only the bell
            return "duplicate"
        outcome, effects = faults.retrying(lambda: self._handle(message_id), what=f"brain event {message_id}",
                                           sleep=self.sleep)
        for one in effects:  # each event's phase 2 on its own: an admission message stays inside one run tree
            if one is not None:
                try:
                    phase2(one, self.publisher, self.notify)
                except BrokerUnavailable as exc:  # committed: the reclaimer sends what phase 2 could not
                    log.warning("phase 2 of %s left to the reclaimer: %s", message_id, exc)
        return outcome

    def _handle(self, message_id: str) -> tuple[str, list[Effects | None]]:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                return self._step(message_id)
            except Conflict:
                log.info("version conflict on %s; planning again", message_id)
            except _Rejected as rejected:  # the take rolled back: the row is queued again, to be failed here
                self._reject_now(message_id, rejected.error)
                return "rejected", []
            except Exception as exc:  # a bug or a poison event: count it, dead-letter it after a few tries
                if faults.is_infrastructure(exc) or self.fail_fast:  # retried (never counted), or the test sees it
                    raise
                outcome, effects = self._crashed(message_id, exc)
                return outcome, [effects]
        raise Conflict(f"gave up on {message_id} after {MAX_CONFLICT_RETRIES} version conflicts")

    def _step(self, message_id: str) -> tuple[str, list[Effects | None]]:
        now = self.clock()
        applied: list[str] = []
        failed: list[tuple[str, Exception]] = []
        with self.engine.begin() as conn, traced(conn, self.sql_events) as trace:
            outcome, first, row = self._apply(conn, message_id, now, trace)  # a failure fails the whole step
            effects = [first]
            taken_rows = [(message_id, row, first)] if outcome == "applied" else []
            extra = self._queued(conn, row.shard, now, skip=message_id) if self._queue_forming(row, now) else []
            for other in extra:
                try:
                    with conn.begin_nested():  # a savepoint: a failing event rolls back alone
                        taken, more, other_row = self._apply(conn, other, now, trace)
                except Exception as exc:
                    if faults.is_infrastructure(exc) or (self.fail_fast and not isinstance(exc, Conflict | _Rejected)):
                        raise
                    failed.append((other, exc))
                    continue
                effects.append(more)
                if taken == "applied":
                    applied.append(other)
                    taken_rows.append((other, other_row, more))
            roots = _roots(conn, [taken[1] for taken in taken_rows])
            ledger.record(conn, [_applied_audit(*taken, now, roots) for taken in taken_rows], now=now)  # one statement
        self._applied.update(applied)  # their own messages, when they come, find them applied here
        for other, exc in failed:  # as one at a time: a rejection recorded, a crash counted
            effects.append(self._failed_alone(other, exc))
        return outcome, effects

    def _failed_alone(self, message_id: str, exc: Exception) -> Effects | None:
        """A row taken from the ledger whose event failed in its savepoint: a version conflict is left to its own
        message; a rejection is recorded and a crash counted now, as if it had come alone (a crashed row is then
        left out of later batches: ``_QUEUED`` takes only rows never crashed)."""
        if isinstance(exc, _Rejected):
            self._reject_now(message_id, exc.error)
        elif not isinstance(exc, Conflict):
            return self._crashed(message_id, exc)[1]
        return None

    def _apply(self, conn, message_id: str, now: float, trace) -> tuple[str, Effects | None, Any]:
        """Take one decide row and apply it: load, plan, phase 1; returns its outcome, its effects and the row
        taken (None: not taken). Tracing on, the step is a span (``cogo.step <kind>``) under the context the row
        carries, and every row the step writes carries the step's."""
        tracer = tracing.active()
        started = tracer.clock_ns() if tracer is not None else 0
        # The inbox, the first statement: the first brain to take the row applies it; if anything below fails,
        # the take rolls back with the rest.
        row = conn.execute(_TAKE, {"_id": message_id, "_now": now, "_due": now + EARLY_TOLERANCE_S}).first()
        if row is None:
            return *self._not_taken(conn, message_id, now), None
        try:
            event = ev.from_row(id=message_id, run_id=row.run_id, kind=row.kind, payload=row.payload)
            # An event about one token loads what it touches; planning asks for the rest when it needs it.
            state = load_state(conn, row.run_id, self.registry, focus=getattr(event, "token_id", None) or None)
        except CogoError as exc:
            if faults.is_infrastructure(exc):
                raise
            raise _Rejected(exc) from exc
        if row.run_version != state.run.version + 1:  # the run moved between the take and the load
            raise Conflict(f"run {row.run_id} changed while {message_id} was taken")
        if tracer is None:
            return "applied", self._write(conn, message_id, row, event, state, now, trace, None), row
        token = state.tokens.get(getattr(event, "token_id", "") or "")
        with tracer.span(f"cogo.step {row.kind}", carrier=tracing.carried(row.payload),
                         root_run_id=state.run.root_run_id or state.run.id, run_id=row.run_id, tenant=row.tenant,
                         node=token.node_id if token is not None else None, start_ns=started,
                         attributes={"cogo.event_id": message_id, "cogo.run_version": row.run_version}) as span:
            return "applied", self._write(conn, message_id, row, event, state, now, trace,
                                          tracing.traceparent(span)), row

    def _write(self, conn, message_id: str, row: Any, event: ev.Event, state: Any, now: float, trace,
               traceparent: str | None) -> Effects:
        """Plan the event on the state loaded for it and write the plan (phase 1); the rows it writes carry
        ``traceparent``."""
        try:
            the_plan = plan(state, event, now=now)
        except NeedsWholeState:
            state = load_state(conn, row.run_id, self.registry)
            the_plan = plan(state, event, now=now)
        phase1 = Phase1(conn, state, cause_id=message_id, now=now, shards=self.shards, registry=self.registry,
                        sql_trace=trace, waiting=self.waiting, traceparent=traceparent)
        return phase1.apply(the_plan)

    def _queue_forming(self, row: Any, now: float) -> bool:
        """Whether the row just taken waited in the queue after it was due: then more are likely waiting (never
        with ``sql_events``: each step's statements are recorded as its run's, one run per transaction)."""
        if row is None or self.batch_after_s is None or self.sql_events:
            return False
        return now - max(row.created_at, row.retry_at or 0.0) >= self.batch_after_s

    def _queued(self, conn, shard: int, now: float, *, skip: str) -> list[str]:
        """The shard's other due decide rows, oldest first, up to a batch (rows another brain is applying are
        passed over, not waited for)."""
        return list(conn.execute(_QUEUED, {"_shard": shard, "_due": now + EARLY_TOLERANCE_S, "_skip": skip,
                                           "_limit": BATCH_MAX - 1}).scalars())

    def _reject_now(self, message_id: str, error: CogoError) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(select(m.c.run_id, m.c.tenant).where(m.c.id == message_id)).first()
            if row is not None:
                _reject(conn, message_id, row, error, self.clock())

    def _not_taken(self, conn, message_id: str, now: float) -> tuple[str, Effects | None]:
        """A row the take left alone: gone or no longer queued (a duplicate delivery), or not due yet (early)."""
        row = conn.execute(select(m.c.status, m.c.retry_at, m.c.shard).where(m.c.id == message_id)).first()
        if row is None or row.status != ledger.QUEUED:
            return "duplicate", None
        countdown = max(0.0, (row.retry_at or now) - now)
        return "early", Effects(deliveries=[Delivery(TASK_DECIDE, decide_queue(row.shard), message_id, countdown)])


    def _crashed(self, message_id: str, exc: Exception) -> tuple[str, Effects | None]:
        """Count a crash on this event; after ``MAX_CRASHES`` the event is rejected and its run fails through the
        planner (a ``gave_up`` event, applied at once), so a poison event cannot be re-sent for ever by the
        reclaimer, and the run's parent, tokens and assignments hear of it like any failure."""
        log.error("brain crashed on %s", message_id, exc_info=exc)
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(update(m).where(m.c.id == message_id, m.c.status == ledger.QUEUED)
                               .values(attempts=m.c.attempts + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000],
                                       last_error_at=now)
                               .returning(m.c.attempts, m.c.run_id, m.c.tenant, m.c.kind, m.c.payload,
                                          m.c.shard)).first()
            if row is None:
                return "crashed", None
            if row.kind == ev.GaveUp.kind:  # failing the run through the planner crashed too: fail it directly
                return "rejected", Effects(deliveries=_fail_directly(conn, message_id, row, now))
            if row.attempts < MAX_CRASHES:
                return "crashed", None
            error = CogoError(f"the brain failed {row.attempts} times on this event: {type(exc).__name__}: {exc}",
                              code="brain.crashed")
            _reject(conn, message_id, row, error, now)
            reported = row.payload.get("assignment_id") if isinstance(row.payload, dict) else None
            gave_up = commands.enqueue_event(conn, run_id=row.run_id, tenant=row.tenant, kind=ev.GaveUp.kind,
                                             payload={"rejected_event": message_id, "error": error.to_dict(),
                                                      **({"assignment_id": reported} if isinstance(reported, str)
                                                         else {})},
                                             now=now, shard=row.shard)
        try:
            return "rejected", _merged(self._handle(gave_up.message_id)[1])
        except Exception:  # noqa: BLE001 - committed: the reclaimer sends the gave_up event again
            log.warning("the gave_up event of run %s is left to the reclaimer", row.run_id, exc_info=True)
            return "rejected", None


def _roots(conn, rows: list[Any]) -> set[str]:
    """Of the runs ``rows`` start (their ``start`` events), the root runs (started by the API, not by a parent's
    step): one read, only when a ``start`` is among them."""
    started = [row.run_id for row in rows if row.kind == ev.Start.kind]
    if not started:
        return set()
    return set(conn.execute(select(runs.c.id).where(runs.c.id.in_(started), runs.c.parent_run_id.is_(None)))
               .scalars())


def _applied_audit(message_id: str, row: Any, effects: Effects | None, now: float, roots: set[str]) -> dict[str, Any]:
    """The ``event_applied`` audit row of a decide row this step applied: its event, how long after it was due it
    was applied (``latency_s``; for a root run's ``start``, marked ``root``, the intent's ingress latency: a child
    run is started by its parent's step, not by the API) and, per model, the usage of the
    assignments its step settled (``[[model, tokens, cost_usd], …]``): what ``coordinator/metrics`` folds into
    ``cogo_step_latency_seconds`` and ``cogo_tokens_total``/``cogo_cost_usd_total``, so the counters equal what
    the ledger settles. It feeds the metrics, not the run's audit: no ``run_id`` (``message_id`` names the decide
    row), so a run's audit rows stay its messages' moves; retention prunes it by age once folded."""
    detail: dict[str, Any] = {"event": row.kind, "latency_s": max(0.0, now - max(row.created_at, row.retry_at or 0.0))}
    if row.kind == ev.Start.kind:
        detail["root"] = row.run_id in roots
    used: dict[str, list[float]] = {}
    for s in effects.settled if effects is not None else ():
        if s.usage.tokens or s.usage.cost_usd:
            total = used.setdefault(s.model, [0, 0.0])
            total[0] += s.usage.tokens
            total[1] += s.usage.cost_usd
    if used:
        detail["settled"] = [[model, tokens, cost] for model, (tokens, cost) in sorted(used.items())]
    return {"message_id": message_id, "run_id": None, "tenant": row.tenant, "kind": "event_applied",
            "detail": detail}


def _merged(effects: list[Effects | None]) -> Effects:
    out = Effects()
    for one in effects:
        if one is not None:
            out.deliveries.extend(one.deliveries)
            out.notifications.extend(one.notifications)
    return out


class _Recent:
    """The last ``size`` ids added: a set that forgets its oldest (a process's memory stays flat)."""

    def __init__(self, size: int):
        self.size, self._ids = size, OrderedDict[str, None]()

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def update(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._ids[i] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


class _Rejected(Exception):  # noqa: N818 - control flow out of the transaction it rolls back
    def __init__(self, error: CogoError):
        super().__init__(str(error))
        self.error = error


_TAKE = (update(m).where(m.c.id == bindparam("_id"), m.c.status == ledger.QUEUED,
                         or_(m.c.retry_at.is_(None), m.c.retry_at <= bindparam("_due")))
         .values(status=ledger.DONE, updated_at=bindparam("_now"),
                 # The run version this event produces, which orders the run's history exactly (replay reads it).
                 run_version=select(runs.c.version + 1).where(runs.c.id == m.c.run_id).scalar_subquery())
         .returning(m.c.kind, m.c.payload, m.c.run_id, m.c.tenant, m.c.shard, m.c.run_version, m.c.created_at,
                    m.c.retry_at))
"""Take a due, queued decide row: ``queued → done`` in one statement that also reads what the event needs."""
_QUEUED = (select(m.c.id)
           .where(m.c.status == ledger.QUEUED, m.c.service == ORCHESTRATOR, m.c.role == DECIDE,
                  m.c.shard == bindparam("_shard"), m.c.id != bindparam("_skip"),
                  m.c.attempts == 0,  # a row the brain crashed on comes only through its own messages
                  or_(m.c.retry_at.is_(None), m.c.retry_at <= bindparam("_due")))
           .order_by(m.c.updated_at, m.c.id).limit(bindparam("_limit"))
           .with_for_update(skip_locked=True))
"""A shard's due decide rows that never crashed the brain, oldest first (the open-rows index holds them)."""


def _fail_directly(conn, message_id: str, row: Any, now: float) -> list[Delivery]:
    """The last resort when the planner cannot even fail the run: fail it here and tell its parent."""
    error = Problem.from_dict(row.payload.get("error") or {"message": "the brain gave up on this run"},
                              code="brain.crashed").to_dict()
    if not ledger.move(conn, message_id, from_=(ledger.QUEUED,), to=ledger.FAILED, now=now):
        return []
    run = conn.execute(update(runs).where(runs.c.id == row.run_id, runs.c.status.not_in(RUN_TERMINAL))
                       .values(status=RUN_FAILED, error=error, ended_at=now, updated_at=now,
                               version=runs.c.version + 1)
                       .returning(runs.c.parent_run_id, runs.c.parent_token_id, runs.c.tenant)).first()
    if run is None or not run.parent_run_id:
        return []
    return [commands.enqueue_event(conn, run_id=run.parent_run_id, tenant=run.tenant, kind=ev.ChildFailed.kind,
                                   payload={"token_id": run.parent_token_id, "child_run_id": row.run_id,
                                            "error": error}, now=now, shard=row.shard)]


def _reject(conn, message_id: str, row: Any, exc: CogoError, now: float) -> None:
    log.error("rejecting brain event %s: %s", message_id, exc)
    if not ledger.move(conn, message_id, from_=(ledger.QUEUED,), to=ledger.FAILED, now=now,
                       values={"last_error": f"{exc.code}: {exc}", "last_error_at": now}):
        return
    ledger.record(conn, [{"message_id": message_id, "run_id": row.run_id, "tenant": row.tenant,
                          "kind": "event_rejected", "detail": exc.to_dict()}], now=now)
