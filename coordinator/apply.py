"""Two-phase apply (seed 001): phase 1 writes a plan in the caller's transaction; phase 2, after commit,
sends what phase 1 put in the outbox. Nothing is decided here.

Phase 1 writes two things: the plan's ``Changes`` (the difference between the loaded state and the next
one, computed once while planning by ``coordinator.planning.working``), and the outside effects of the
decisions that have them (``EFFECTS``: outbox rows, ledger moves, approvals rows, child runs). It places
the ``dispatch.*`` events of what it sent, took back or settled right after the decision (even when the
statement itself runs at the end, in lock order), so the trace reads "decided X, did X".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Connection, cast, delete, func, insert, literal, update
from sqlalchemy.dialects.postgresql import JSONB

from bus import db, introspection, ledger
from bus.envelope import AssignmentEnvelope, Intent, TokenRef
from bus.errors import Conflict, Problem
from bus.introspection import IntrospectionEvent
from bus.outbox import Delivery, Publisher, delivery_for
from bus.routing import Route, shard_for
from bus.schema import agent_messages
from bus.sql_trace import SqlTrace
from bus.tracing import TRACE_KEY
from coordinator import budgets, settlement
from coordinator import decisions as d
from coordinator.admission.waiting import Waiting
from coordinator.definitions import Registry
from coordinator.planning.builder import Plan
from coordinator.planning.working import Changes
from coordinator.schema import approvals, branch_scopes, fan_arrivals, fan_ins, run_visits, runs, tokens
from coordinator.state import WorkflowState

log = logging.getLogger(__name__)
ABANDONABLE = (ledger.QUEUED, ledger.DISPATCHED, ledger.RETRY_WAIT, ledger.RUNNING)


@dataclass
class Effects:
    """What phase 2 must do once phase 1 has committed."""

    deliveries: list[Delivery] = field(default_factory=list)
    notifications: list[tuple[str, Any]] = field(default_factory=list)
    settled: list[ledger.Settled] = field(default_factory=list)
    """What phase 1 settled (the brain's audit row of the step counts its usage: ``coordinator/metrics``)."""


class Phase1:
    """Writes one plan: its changes, then its decisions' outside effects, as few statements as it can."""

    def __init__(self, conn: Connection, state: WorkflowState, *, cause_id: str, now: float, shards: int,
                 registry: Registry | None = None, sql_trace: SqlTrace | None = None, waiting: Waiting | None = None,
                 traceparent: str | None = None):
        self.conn, self.state, self.cause_id, self.now, self.shards = conn, state, cause_id, now, shards
        self.traceparent = traceparent  # the step's span (tracing on): every row this step writes carries it
        self.sql_trace = sql_trace  # the step's statements so far, recorded as sql.* events when asked
        self.registry = registry  # child runs need their definitions
        self.waiting = waiting  # wakes assignments waiting for the slots this step frees
        self.run = state.run
        self.shard = shard_for(self.run.root_run_id or self.run.id, shards)  # the run tree's: every row it writes
        self.events: list[IntrospectionEvent] = []
        self.messages: list[ledger.NewMessage] = []
        self.abandoned: dict[str, str] = {}
        """Assignment id → why: to be moved to ``dead``."""
        self.to_settle: list[str] = []
        self.above: budgets.Chain | None = None
        """The budgeted runs above this run, when this step settles anything under them."""
        self.marks: dict[str, int] = {}
        """Assignment id → where in ``events`` its abandonment or settlement was decided."""
        self.placed: list[tuple[int, IntrospectionEvent]] = []
        self.new_approvals: list[dict[str, Any]] = []
        self.resolved_approvals: list[tuple[str, dict[str, Any]]] = []
        self.children: list[d.StartSubworkflow] = []
        self.effects = Effects()

    def apply(self, plan: Plan) -> Effects:
        """Write the whole plan; raises Conflict when the run changed since it was loaded."""
        for item in plan.items:
            if isinstance(item, IntrospectionEvent):
                self.events.append(item)
            else:
                effect = EFFECTS.get(type(item))
                if effect is not None:
                    effect(self, item)
        self._write(plan.changes)
        return self.effects

    def op(self, type_: str, token_id: str | None = None, node_id: str | None = None, **data: Any) -> None:
        """Record a ``dispatch.*`` event of this step: what it sent or took back."""
        self.events.append(IntrospectionEvent(type_, self.run.id, data, token_id, node_id, self.run.parent_run_id))

    def mark(self, assignment_id: str) -> None:
        """Remember that what happens to ``assignment_id`` was decided here, in the trace."""
        self.marks.setdefault(assignment_id, len(self.events))

    def op_at(self, type_: str, assignment_id: str, **data: Any) -> None:
        """A ``dispatch.*`` event of ``assignment_id``, placed where its fate was decided."""
        event = IntrospectionEvent(type_, self.run.id, {"assignment_id": assignment_id, **data}, None, None,
                                   self.run.parent_run_id)
        self.placed.append((self.marks.get(assignment_id, len(self.events)), event))

    def _trace(self) -> list[IntrospectionEvent]:
        placed = sorted(self.placed, key=lambda p: p[0])  # stable: in the order they were made at one place
        out, k = [], 0
        for i, event in enumerate(self.events):
            while k < len(placed) and placed[k][0] <= i:
                out.append(placed[k][1])
                k += 1
            out.append(event)
        return out + [e for _, e in placed[k:]]

    def send(self, message: ledger.NewMessage) -> None:
        """Add an outbox row and its first delivery."""
        self.messages.append(message)
        self.effects.deliveries.append(delivery_for(message, now=self.now))

    def unsend(self, message_id: str) -> bool:
        """Take back an outbox row of this same step before anything was written or sent; whether it was one."""
        kept = [m for m in self.messages if m.id != message_id]
        if len(kept) == len(self.messages):
            return False
        self.messages = kept
        self.effects.deliveries = [x for x in self.effects.deliveries if x.message_id != message_id]
        return True

    def decide_row(self, run_id: str, kind: str, payload: dict[str, Any], *, retry_at: float | None = None,
                   id: str | None = None) -> ledger.NewMessage:
        """An outbox row for a brain (this run's, a parent's or a child's)."""
        if self.traceparent is not None:
            payload = {**payload, TRACE_KEY: self.traceparent}
        return ledger.brain_event(run_id=run_id, tenant=self.run.tenant, kind=kind, payload=payload,
                                  shard=self.shard, causation_id=self.cause_id, retry_at=retry_at, id=id)

    # -- writing -------------------------------------------------------------------------------------
    def _context_written(self, delta: dict[str, Any]) -> Any:
        """The run's new context as a delta the database applies to the row (the keys the step wrote, each
        replaced whole: jsonb ``||`` on PostgreSQL, ``json_set`` on SQLite), so a step that writes one key into a
        large context does not send and rewrite it all; the whole context where a key cannot be addressed."""
        dialect = self.conn.dialect.name
        if dialect == "postgresql":
            return cast(cast(runs.c.context, JSONB).op("||")(cast(literal(delta, JSON), JSONB)), JSON)
        if dialect == "sqlite" and not any('"' in k for k in delta):  # a JSON path label cannot hold '"'
            pairs = [x for k, v in delta.items() for x in (f'$."{k}"', func.json(db.dumps(v)))]
            return func.json_set(runs.c.context, *pairs)
        return {**self.state.context, **delta}

    def _write(self, c: Changes) -> None:
        """The changes first (the run's version check is the first statement), then the effects."""
        conn, run_id, now = self.conn, self.run.id, self.now
        if self.to_settle or self.abandoned:  # settling changes budget counters: the tree's root is locked first
            self.above = budgets.chain(conn, run_id) if self.run.budget or self.run.parent_run_id else None
            if self.above is not None and self.above.root_id != run_id:
                budgets.lock_root(conn, self.above)
        values = {**c.run, **({"ended_at": now} if c.ended else {})}
        if c.context:
            values["context"] = self._context_written(c.context)
        if c.active_delta:
            values["active_tokens"] = runs.c.active_tokens + c.active_delta
        if c.waiting_delta:
            values["waiting_tokens"] = runs.c.waiting_tokens + c.waiting_delta
        stmt = (update(runs).where(runs.c.id == run_id, runs.c.version == self.run.version)
                .values(version=runs.c.version + 1, updated_at=now, **values))
        if conn.execute(stmt).rowcount != 1:
            raise Conflict(f"run {run_id} changed since it was loaded (version {self.run.version})")
        if c.new_tokens:
            conn.execute(insert(tokens), [_token_row(run_id, t, error, now) for t, error in c.new_tokens])
        for token_id, changed in c.token_updates:
            conn.execute(update(tokens).where(tokens.c.run_id == run_id, tokens.c.id == token_id)
                         .values(updated_at=now, **changed))
        self._write_fans(c)
        self._write_scopes(c)
        self._write_visits(c)
        if c.ended:
            self._close_timers()
            for timer in [msg.id for msg in self.messages if msg.kind == "timer" and msg.run_id == run_id]:
                self.unsend(timer)  # scheduled in the step that ended the run: nothing left to wake
        self._write_approvals()
        self._start_children()
        self._abandon()
        ledger.insert_messages(conn, self.messages, now=now)
        self._settle()
        self.events = self._trace()
        if self.sql_trace is not None:
            self.events.extend(self.sql_trace.events(run_id, self.run.parent_run_id))
        introspection.write(conn, self.events, now=now)

    def _write_fans(self, c: Changes) -> None:
        """The fan-ins' counts and firings, and a row per arrival: never a fan's whole list of arrivals."""
        conn, run_id, now = self.conn, self.run.id, self.now
        if c.new_fans:
            conn.execute(insert(fan_ins), [{"run_id": run_id, "fan_id": f.fan_id, "join_node": f.join_node,
                                            "expected": f.expected, "arrived_count": f.count, "fired": f.fired,
                                            "owner_token_id": f.owner, "created_at": now, "updated_at": now}
                                           for f in c.new_fans])
        for fan_id, count, fired in c.fan_updates:
            stmt = (update(fan_ins).where(fan_ins.c.run_id == run_id, fan_ins.c.fan_id == fan_id,
                                          fan_ins.c.fired.is_(False))
                    .values(arrived_count=count, fired=fired, updated_at=now))
            if conn.execute(stmt).rowcount != 1:
                raise Conflict(f"join {fan_id} of run {run_id} already fired")
        if c.arrivals:
            conn.execute(insert(fan_arrivals), [{"run_id": run_id, "fan_id": fan_id, "branch_index": index,
                                                 "token_id": token_id, "created_at": now}
                                                for fan_id, index, token_id in c.arrivals])
        if c.closed_fans:
            conn.execute(delete(fan_arrivals).where(fan_arrivals.c.run_id == run_id,
                                                    fan_arrivals.c.fan_id.in_(c.closed_fans)))
            conn.execute(delete(fan_ins).where(fan_ins.c.run_id == run_id, fan_ins.c.fan_id.in_(c.closed_fans)))

    def _write_scopes(self, c: Changes) -> None:
        conn = self.conn
        if c.new_scopes:
            conn.execute(insert(branch_scopes), [
                {"id": scope, "run_id": self.run.id, "fan_id": fan_id, "branch_index": index, "data": data,
                 "created_at": self.now} for scope, fan_id, index, data in c.new_scopes])
        for scope, data in c.scope_updates:
            conn.execute(update(branch_scopes).where(branch_scopes.c.id == scope).values(data=data))
        if c.dropped_scopes:
            conn.execute(delete(branch_scopes).where(branch_scopes.c.id.in_(c.dropped_scopes)))

    def _write_visits(self, c: Changes) -> None:
        conn, run_id = self.conn, self.run.id
        new = [{"run_id": run_id, "scope": s, "node_id": n, "count": k} for s, n, k, existed in c.branch_visits
               if not existed]
        if new:
            conn.execute(insert(run_visits), new)
        for scope, node_id, count, existed in c.branch_visits:
            if existed:
                conn.execute(update(run_visits).where(run_visits.c.run_id == run_id, run_visits.c.scope == scope,
                                                      run_visits.c.node_id == node_id).values(count=count))
        if c.dropped_scopes:
            conn.execute(delete(run_visits).where(run_visits.c.run_id == run_id,
                                                  run_visits.c.scope.in_(c.dropped_scopes)))

    def _close_timers(self) -> None:
        """A run that ended has nothing left to wake: its pending timers (a decided approval's deadline, a node
        timeout that never fired) are closed with it rather than left queued until they fire and are ignored."""
        self.conn.execute(update(agent_messages).where(agent_messages.c.run_id == self.run.id,
                                                       agent_messages.c.kind == "timer",
                                                       agent_messages.c.status == ledger.QUEUED)
                          .values(status=ledger.DONE, updated_at=self.now))

    def _write_approvals(self) -> None:
        if self.new_approvals:
            self.conn.execute(insert(approvals), self.new_approvals)
        for approval_id, values in self.resolved_approvals:
            self.conn.execute(update(approvals).where(approvals.c.id == approval_id, approvals.c.status == "pending")
                              .values(**values))

    def _start_children(self) -> None:
        from coordinator.intents import create_run

        for x in self.children:
            definition = self.registry.get(x.workflow, x.version)
            parent = {"run_id": self.run.id, "token_id": x.token_id, "root_run_id": self.run.root_run_id or self.run.id,
                      "depth": self.run.depth + 1}
            _, delivery = create_run(self.conn, Intent(tenant=self.run.tenant, intent=x.workflow, payload=x.input),
                                     definition, now=self.now, shards=self.shards, run_id=x.child_run_id,
                                     parent=parent, traceparent=self.traceparent)
            self.effects.deliveries.append(delivery)

    def _abandon(self) -> None:
        """Abandoned assignments become ``dead``: the dispatcher will not admit them, a worker's fenced final write
        will find them gone, and their reservation is released once no attempt of theirs runs (``_settle``)."""
        audit = []
        for assignment_id, reason in self.abandoned.items():
            if ledger.move(self.conn, assignment_id, from_=ABANDONABLE, to=ledger.DEAD, now=self.now,
                           values={"last_error": f"abandoned: {reason}", "last_error_at": self.now}):
                audit.append({"message_id": assignment_id, "run_id": self.run.id, "tenant": self.run.tenant,
                              "kind": "execute_cancelled", "detail": {"reason": reason}})
                self.op_at("dispatch.assignment.abandoned", assignment_id)
        ledger.record(self.conn, audit, now=self.now)

    def _settle(self) -> None:
        """Settle the outcomes this step consumed and the abandoned assignments no attempt is running (an
        attempt that may still run keeps its reservation until it ends: ``ledger.close_abandoned``, or the
        reclaimer once its lease ran out, reports it back to be settled). Each adds its total usage, read from
        the row, to the run — once, because only the first settle returns it — and, under budgets, moves what
        it held to spent on the tree's counters (``coordinator.settlement``); what it held beyond its usage is
        free, so what waits for it is asked again now rather than after its back-off. After the changes: rows
        are locked in the dispatcher's order (root run, run, assignment)."""
        settled = [s for a in self.to_settle if (s := ledger.settle(self.conn, a, now=self.now)) is not None]
        settled += ledger.settle_abandoned(self.conn, self.abandoned, now=self.now)
        self.effects.settled += settled
        for s in settled:
            self.op_at("dispatch.assignment.settled", s.id, tokens=s.usage.tokens, cost_usd=s.usage.cost_usd)
        self.effects.deliveries += settlement.settle(self.conn, settled, run_id=self.run.id, above=self.above,
                                                     now=self.now, shard=self.shard, waiting=self.waiting)


def _token_row(run_id: str, t: Any, error: Any, now: float) -> dict[str, Any]:
    return {"run_id": run_id, "id": t.id, "node_id": t.node_id, "status": t.status, "scope": t.scope,
            "fan_id": t.fan_id, "branch_index": t.branch_index, "attempt": t.attempt, "iteration": t.iteration,
            "assignment_id": t.assignment_id, "child_run_id": t.child_run_id, "wait": t.wait, "output": t.output,
            "error": error, "created_at": now, "updated_at": now}


# -- the outside effects of each decision that has them ------------------------------------------------
def _dispatch(p: Phase1, x: d.DispatchToken) -> None:
    route = Route(x.service, x.role, p.shard, p.run.tenant)
    payload = AssignmentEnvelope(x.assignment, TokenRef(x.token_id, x.node_id, p.run.parent_run_id), x.retry,
                                 x.input, p.traceparent).wire()
    p.send(ledger.NewMessage(route=route, kind="assignment", payload=payload, run_id=p.run.id,
                             causation_id=p.cause_id, max_attempts=x.max_attempts, id=x.assignment_id))
    p.op("dispatch.token.enqueued", x.token_id, x.node_id, assignment_id=x.assignment_id, queue=route.queue)


def _alarm(p: Phase1, x: d.ScheduleAlarm) -> None:
    p.send(p.decide_row(p.run.id, "timer", {"token_id": x.token_id, "purpose": x.purpose},
                        retry_at=x.fire_at, id=x.alarm_id))


def _notify(p: Phase1, x: d.Notify) -> None:
    p.effects.notifications.append((x.channel, x.message))
    p.op("dispatch.notify.queued", channel=x.channel)


def _cancel_children(p: Phase1, x: d.CancelActiveTokens) -> None:
    for token_id in x.token_ids:
        token = p.state.tokens.get(token_id)
        if token is not None and token.child_run_id:
            p.send(p.decide_row(token.child_run_id, "cancel", {"reason": f"parent: {x.reason}"}))
        else:  # a child started in this same step is never created
            p.children = [c for c in p.children if c.token_id != token_id]


def _abandon(p: Phase1, x: d.AbandonAssignments) -> None:
    for assignment_id in x.assignment_ids:
        if not p.unsend(assignment_id):  # dispatched in this same step: never sent
            p.abandoned.setdefault(assignment_id, x.reason)
            p.mark(assignment_id)


def _settle(p: Phase1, x: d.SettleAssignment) -> None:
    p.to_settle.append(x.assignment_id)
    p.mark(x.assignment_id)


def _tell_parent(p: Phase1, x: d.CompleteWorkflow | d.FailWorkflow | d.CancelWorkflow) -> None:
    if not p.run.parent_run_id:
        return
    if isinstance(x, d.CompleteWorkflow):
        kind, body = "child_completed", {"output": x.output}
    else:
        error = x.error if isinstance(x, d.FailWorkflow) else Problem("cancelled", x.reason)
        kind, body = "child_failed", {"error": error.to_dict()}
    p.send(p.decide_row(p.run.parent_run_id, kind,
                        {"token_id": p.run.parent_token_id, "child_run_id": p.run.id, **body}))


def _request_approval(p: Phase1, x: d.RequestApproval) -> None:
    p.new_approvals.append({
        "id": x.approval_id, "run_id": p.run.id, "token_id": x.token_id, "node_id": x.node_id,
        "tenant": p.run.tenant, "status": "pending", "prompt": x.prompt, "requested_at": p.now,
        "expires_at": x.expires_at})


def _resolve_approval(p: Phase1, x: d.ResolveApproval) -> None:
    p.resolved_approvals.append((x.approval_id, {"status": x.status, "decided_at": p.now, "decided_by": x.by,
                                                 "comment": x.comment}))


EFFECTS: dict[type, Callable[[Phase1, Any], None]] = {
    d.DispatchToken: _dispatch,
    d.ScheduleAlarm: _alarm,
    d.Notify: _notify,
    d.CancelActiveTokens: _cancel_children,
    d.AbandonAssignments: _abandon,
    d.SettleAssignment: _settle,
    d.CompleteWorkflow: _tell_parent,
    d.FailWorkflow: _tell_parent,
    d.CancelWorkflow: _tell_parent,
    d.StartSubworkflow: lambda p, x: p.children.append(x),
    d.RequestApproval: _request_approval,
    d.ResolveApproval: _resolve_approval,
}
"""The outside effects of each decision that has any; what decisions do to the state is in ``Changes``."""


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
