"""Two-phase apply (seed 001): phase 1 writes every state change of a plan in the caller's transaction;
phase 2, after commit, sends what phase 1 put in the outbox. No decision is planned here.

Phase 1 emits the ``operation.*`` and ``dispatch.*`` introspection events of each decision right after
the ``decision.*`` events planning made, so the trace reads as "decided X, did X".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, update

from bus import introspection, ledger
from bus.envelope import TokenRef, assignment_payload
from bus.errors import Conflict
from bus.introspection import IntrospectionEvent
from bus.outbox import Delivery, Publisher, delivery_for
from bus.routing import Route, shard_for
from bus.schema import agent_messages
from bus.sql_trace import SqlTrace
from coordinator import decisions as d
from coordinator.definitions import Registry
from coordinator.planning.builder import Plan
from coordinator.schema import runs, tokens
from coordinator.state import (
    CANCELLED,
    DISPATCHED,
    FAILED,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_PENDING,
    RUN_RUNNING,
    RUN_TERMINAL,
    RUN_WAITING,
    TOKEN_ACTIVE,
    WAITING,
    WorkflowState,
)
from coordinator.structures import STRUCTURE_APPLIERS, StructureWrites

log = logging.getLogger(__name__)
ABANDONABLE = (ledger.QUEUED, ledger.DISPATCHED, ledger.RETRY_WAIT, ledger.RUNNING)


@dataclass
class Effects:
    """What phase 2 must do once phase 1 has committed."""

    deliveries: list[Delivery] = field(default_factory=list)
    notifications: list[tuple[str, Any]] = field(default_factory=list)


class Phase1:
    """Accumulates one plan's writes and executes them as few statements as it can."""

    def __init__(self, conn: Connection, state: WorkflowState, *, cause_id: str, now: float, shards: int,
                 registry: Registry | None = None, sql_trace: SqlTrace | None = None):
        self.conn, self.state, self.cause_id, self.now, self.shards = conn, state, cause_id, now, shards
        self.sql_trace = sql_trace  # the step's statements so far, recorded as sql.* events when asked
        self.registry = registry  # child runs need their definitions
        self.run = state.run
        self.events: list[IntrospectionEvent] = []
        self.run_values: dict[str, Any] = {"status": self.run.status}
        self.context = dict(state.context)
        self.visits = dict(state.visits)
        self.token_seq = state.token_seq
        self.statuses = {t.id: t.status for t in state.tokens.values()}
        self.new_tokens: dict[str, dict[str, Any]] = {}
        self.token_updates: dict[str, dict[str, Any]] = {}
        self.messages: list[ledger.NewMessage] = []
        self.cancelled_assignments: list[str] = []
        self.step_assignments: dict[str, str] = {}
        self.structures = StructureWrites(state)
        self.effects = Effects()

    # -- the walk ------------------------------------------------------------------------------------
    def apply(self, plan: Plan) -> Effects:
        """Write the whole plan; raises Conflict when the run changed since it was loaded."""
        for item in plan.items:
            if isinstance(item, IntrospectionEvent):
                self.events.append(item)
            else:
                APPLIERS[type(item)](self, item)
        self._flush()
        return self.effects

    def op(self, type_: str, token_id: str | None = None, node_id: str | None = None, **data: Any) -> None:
        """Record an operation/dispatch event of this step."""
        self.events.append(IntrospectionEvent(type_, self.run.id, data, token_id, node_id, self.run.parent_run_id))

    def write(self, scope: str | None, key: str, value: Any) -> None:
        """``context[key] = value`` in the root (``scope=None``) or a branch scope."""
        if scope is None:
            self.context[key] = value
        else:
            self.structures.write_scope(scope, key, value)

    def token_update(self, token_id: str, **values: Any) -> None:
        """Change a token, whether it was loaded or created in this same step."""
        if "status" in values:
            self.statuses[token_id] = values["status"]
        target = self.new_tokens.get(token_id)
        if target is not None:
            target.update(values)
        else:
            self.token_updates.setdefault(token_id, {}).update(values)

    def send(self, message: ledger.NewMessage) -> None:
        """Add an outbox row and its first delivery."""
        self.messages.append(message)
        self.effects.deliveries.append(delivery_for(message, shards=self.shards, now=self.now))

    def unsend(self, message_id: str) -> None:
        """Take back an outbox row of this same step before anything was written or sent."""
        self.messages = [m for m in self.messages if m.id != message_id]
        self.effects.deliveries = [d for d in self.effects.deliveries if d.message_id != message_id]

    def decide_row(self, run_id: str, kind: str, payload: dict[str, Any], *, retry_at: float | None = None,
                   id: str | None = None, tenant: str | None = None) -> ledger.NewMessage:
        """An outbox row for a brain (this run's, a parent's or a child's)."""
        return ledger.brain_event(run_id=run_id, tenant=tenant or self.run.tenant, kind=kind, payload=payload,
                                  shards=self.shards, causation_id=self.cause_id, retry_at=retry_at, id=id)

    # -- writing -------------------------------------------------------------------------------------
    def _abandon_assignments(self) -> None:
        """Assignments whose token was cancelled or failed (a timeout) while they were still open become
        ``dead``: the dispatcher will not admit them, a worker's fenced final write will find them gone,
        and their budget reservation is released."""
        audit = []
        for assignment_id in dict.fromkeys(self.cancelled_assignments):
            if ledger.move(self.conn, assignment_id, from_=ABANDONABLE, to=ledger.DEAD, now=self.now,
                           values={"last_error": "abandoned: its token ended", "last_error_at": self.now}):
                audit.append({"message_id": assignment_id, "run_id": self.run.id, "tenant": self.run.tenant,
                              "kind": "execute_cancelled", "detail": {"reason": "its token ended"}})
                self.op("dispatch.assignment.abandoned", assignment_id=assignment_id)
        ledger.record(self.conn, audit, now=self.now)

    def _flush(self) -> None:
        status = self.run_values["status"]
        if status not in RUN_TERMINAL and status != RUN_PENDING:
            active = [s for s in self.statuses.values() if s in TOKEN_ACTIVE]
            status = RUN_WAITING if active and all(s == WAITING for s in active) else RUN_RUNNING
            self.run_values["status"] = status
        stmt = (update(runs).where(runs.c.id == self.run.id, runs.c.version == self.run.version)
                .values(context=self.context, visits=self.visits, token_seq=self.token_seq,
                        version=runs.c.version + 1, updated_at=self.now, **self.run_values))
        if self.conn.execute(stmt).rowcount != 1:
            raise Conflict(f"run {self.run.id} changed since it was loaded (version {self.run.version})")
        if self.new_tokens:
            self.conn.execute(insert(tokens), list(self.new_tokens.values()))
        for token_id, values in self.token_updates.items():
            self.conn.execute(update(tokens).where(tokens.c.run_id == self.run.id, tokens.c.id == token_id)
                              .values(updated_at=self.now, **values))
        self.structures.flush(self)
        self._abandon_assignments()
        ledger.insert_messages(self.conn, self.messages, now=self.now)
        if self.sql_trace is not None:
            self.events.extend(self.sql_trace.events(self.run.id, self.run.parent_run_id))
        introspection.write(self.conn, self.events, now=self.now)


# -- one applier per decision type --------------------------------------------------------------------
def _initialize(p: Phase1, _: d.InitializeWorkflow) -> None:
    p.run_values["status"] = RUN_RUNNING
    p.op("operation.workflow.initialize", workflow=p.state.definition.name, version=p.state.definition.version)


def _create_token(p: Phase1, x: d.CreateToken) -> None:
    t = x.token
    p.new_tokens[t.id] = {"run_id": p.run.id, "id": t.id, "node_id": t.node_id, "status": t.status,
                          "scope": t.scope, "fan_id": t.fan_id, "branch_index": t.branch_index,
                          "attempt": t.attempt, "iteration": t.iteration, "assignment_id": t.assignment_id,
                          "child_run_id": t.child_run_id, "wait": t.wait, "output": t.output,
                          "error": None, "created_at": p.now, "updated_at": p.now}
    p.statuses[t.id] = t.status
    p.visits[f"{t.scope or ''}/{t.node_id}"] = t.iteration + 1
    p.token_seq = max(p.token_seq, int(t.id.rsplit(".", 1)[1]))
    p.op("operation.tokens.create", t.id, t.node_id, status=t.status, scope=t.scope, iteration=t.iteration)


def _update_token(p: Phase1, x: d.UpdateTokenStatus) -> None:
    before = p.statuses.get(x.token_id)
    token = p.state.tokens.get(x.token_id)
    if x.status in (FAILED, CANCELLED) and token is not None and token.assignment_id:
        p.cancelled_assignments.append(token.assignment_id)  # e.g. a timeout: stop the work it waited for
    p.token_update(x.token_id, status=x.status, output=x.output, error=x.error)
    p.op("operation.tokens.update_status", x.token_id, **{"from": before, "to": x.status})


def _mark_waiting(p: Phase1, x: d.MarkWaiting) -> None:
    p.token_update(x.token_id, status=WAITING, wait=x.wait)
    p.op("operation.tokens.mark_waiting", x.token_id, wait=x.wait)


def _set_context(p: Phase1, x: d.SetContext | d.ApplyOutputMapping) -> None:
    p.write(x.scope, x.key, x.value)
    p.op("operation.context.set" if x.scope is None else "operation.context.write", getattr(x, "token_id", None),
         key=x.key, scope=x.scope)


def _dispatch(p: Phase1, x: d.DispatchToken) -> None:
    route = Route(x.service, x.role, shard_for(p.run.id, p.shards), p.run.tenant)
    payload = assignment_payload(assignment=x.assignment, token=TokenRef(x.token_id, x.node_id, p.run.parent_run_id),
                                 retry=x.retry, input=x.input)
    p.send(ledger.NewMessage(route=route, kind="assignment", payload=payload, run_id=p.run.id,
                             causation_id=p.cause_id, max_attempts=x.max_attempts, id=x.assignment_id))
    p.token_update(x.token_id, status=DISPATCHED, assignment_id=x.assignment_id)
    p.step_assignments[x.token_id] = x.assignment_id
    p.op("dispatch.token.enqueued", x.token_id, x.node_id, assignment_id=x.assignment_id, queue=route.queue)


def _alarm(p: Phase1, x: d.ScheduleAlarm) -> None:
    p.send(p.decide_row(p.run.id, "timer", {"token_id": x.token_id, "purpose": x.purpose},
                        retry_at=x.fire_at, id=x.alarm_id))
    p.op("operation.alarm.schedule", x.token_id, purpose=x.purpose, fire_at=x.fire_at)


def _notify(p: Phase1, x: d.Notify) -> None:
    p.effects.notifications.append((x.channel, x.message))
    p.op("dispatch.notify.queued", channel=x.channel)


def _cancel_tokens(p: Phase1, x: d.CancelActiveTokens) -> None:
    for token_id in x.token_ids:
        p.token_update(token_id, status=CANCELLED)
        if token_id in p.step_assignments:
            p.unsend(p.step_assignments.pop(token_id))  # dispatched and cancelled in one step: never sent
        token = p.state.tokens.get(token_id)
        if token is not None and token.assignment_id:
            p.cancelled_assignments.append(token.assignment_id)
        if token is not None and token.child_run_id:
            p.send(p.decide_row(token.child_run_id, "cancel", {"reason": f"parent: {x.reason}"}))
    p.op("operation.tokens.cancel", token_ids=list(x.token_ids), reason=x.reason)


def _finish_run(p: Phase1, status: str, *, output: Any = None, error: Any = None) -> None:
    p.run_values.update(status=status, ended_at=p.now, output=output, error=error)
    # A run that ended has nothing left to wake: its pending timers (a decided approval's deadline, a node
    # timeout that never fired) are closed with it rather than left queued until they fire and are ignored.
    p.conn.execute(update(agent_messages).where(agent_messages.c.run_id == p.run.id,
                                                agent_messages.c.kind == "timer",
                                                agent_messages.c.status == ledger.QUEUED)
                   .values(status=ledger.DONE, updated_at=p.now))
    if p.run.parent_run_id:
        if status == RUN_COMPLETED:
            kind, body = "child_completed", {"output": output}
        else:
            kind, body = "child_failed", {"error": error or {"code": "child." + status}}
        p.send(p.decide_row(p.run.parent_run_id, kind,
                            {"token_id": p.run.parent_token_id, "child_run_id": p.run.id, **body}))
    p.op(f"operation.workflow.{ {RUN_COMPLETED: 'complete', RUN_FAILED: 'fail'}.get(status, 'cancel') }",
         status=status, **({"error": error} if error else {}))


APPLIERS: dict[type, Callable[[Phase1, Any], None]] = {
    d.InitializeWorkflow: _initialize,
    d.CreateToken: _create_token,
    d.UpdateTokenStatus: _update_token,
    d.MarkWaiting: _mark_waiting,
    d.SetContext: _set_context,
    d.ApplyOutputMapping: _set_context,
    d.DispatchToken: _dispatch,
    d.ScheduleAlarm: _alarm,
    d.Notify: _notify,
    d.CancelActiveTokens: _cancel_tokens,
    d.CompleteWorkflow: lambda p, x: _finish_run(p, RUN_COMPLETED, output=x.output),
    d.FailWorkflow: lambda p, x: _finish_run(p, RUN_FAILED, error=x.error),
    d.CancelWorkflow: lambda p, x: _finish_run(p, RUN_CANCELLED, error={"code": "cancelled", "message": x.reason}),
    **STRUCTURE_APPLIERS,
}
"""How each decision type changes state (branch scopes, joins, approvals, children: ``structures``)."""


def phase2(effects: Effects, publisher: Publisher, notify: Callable[[str, Any], None] | None = None) -> None:
    """Send the outbox rows of a committed step; what fails is left to the reclaimer."""
    if effects.deliveries:
        publisher.send(effects.deliveries)
    for channel, message in effects.notifications:
        if notify is not None:
            try:
                notify(channel, message)
            except Exception as exc:  # a lost notification must not undo a committed step
                log.warning("notify on %s failed: %s", channel, exc)
