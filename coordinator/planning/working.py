"""The one state transition: what each decision does to a run's state, computed once.

The plan builder keeps a ``WorkingCopy`` in step with its decisions while planning (so that a later decision
of the same plan sees an earlier one) and hands the result over in the ``Plan``: the next state, what
``load_state`` will read after commit, and ``Changes``, the difference from the loaded state that phase 1
writes (``coordinator.apply``). Replay and the planning tests go from state to state the same way.

Each entry of ``TRANSITIONS`` changes the copy and records the ``operation.*`` events that say what it did,
right after the decision in the plan, so a trace reads "decided X, did X". Decisions with only outside
effects (outbox rows, ledger moves, approvals rows, child runs) are carried out by phase 1 alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bus.errors import Problem
from bus.introspection import IntrospectionEvent
from coordinator import decisions as d
from coordinator.state import (
    CANCELLED,
    DISPATCHED,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_PENDING,
    RUN_RUNNING,
    RUN_TERMINAL,
    RUN_WAITING,
    TOKEN_ACTIVE,
    WAITING,
    FanIn,
    Token,
    WorkflowState,
    token_seq_of,
)

_TOKEN_FIELDS = tuple(f.name for f in fields(Token))


class NeedsWholeState(Exception):  # noqa: N818 - a request, not an error
    """Planning needs more than the partial state it was given (every active token, every branch scope): the
    brain loads the whole state and plans again. Raised before any decision depends on what is missing, so a
    plan made on a partial state is exactly the plan the whole state gives."""


def visit_key(scope: str | None, node_id: str) -> str:
    """The key of ``visits`` that counts entries of ``node_id`` in ``scope`` (loop bounds)."""
    return f"{scope or ''}/{node_id}"


def visit_scope(key: str) -> str:
    """The branch scope of a ``visits`` key ('' for the run's root scope)."""
    return key.rpartition("/")[0]


@dataclass(frozen=True)
class Changes:
    """What phase 1 writes for one plan: the difference between the loaded state and the next one."""

    run: dict[str, Any]
    """The run row's new values (status, the root scope's visits, token sequence; output, error and an end when
    the run finished)."""
    ended: bool
    context: dict[str, Any] = field(default_factory=dict)
    """The root-scope keys this step wrote, with their new values: phase 1 writes only them (a delta)."""
    new_tokens: tuple[tuple[Token, Any], ...] = ()
    """Tokens created in this step, each with its error (a token may be created and finished in one step)."""
    token_updates: tuple[tuple[str, dict[str, Any]], ...] = ()
    """Loaded tokens that changed: only the columns that did."""
    new_fans: tuple[FanIn, ...] = ()
    fan_updates: tuple[tuple[str, int, bool], ...] = ()
    """``(fan_id, count, fired)`` of the loaded fan-ins that changed (an arrival, a firing): written only while still
    unfired."""
    arrivals: tuple[tuple[str, int, str], ...] = ()
    """``(fan_id, branch_index, token_id)`` of the arrivals of this step (``fan_arrivals`` rows), never the fan's
    whole list: what an arrival writes does not grow with the fan's width."""
    closed_fans: tuple[str, ...] = ()
    """Fan-ins let go unfired (their arrivals go with them)."""
    new_scopes: tuple[tuple[str, str, int, dict[str, Any]], ...] = ()
    """``(scope, fan_id, branch_index, data)`` of the branch scopes created in this step."""
    scope_updates: tuple[tuple[str, dict[str, Any]], ...] = ()
    dropped_scopes: tuple[str, ...] = ()
    active_delta: int = 0
    waiting_delta: int = 0
    """How the run's counts of active and of waiting tokens change (``runs.active_tokens``, ``waiting_tokens``)."""
    branch_visits: tuple[tuple[str, str, int, bool], ...] = ()
    """``(scope, node_id, count, existed)`` of the branch loop counters that changed (``run_visits`` rows; a
    dropped scope's go with it, ``dropped_scopes``)."""


class WorkingCopy:
    """Mutable copies of everything planning may change, made from a ``WorkflowState``."""

    def __init__(self, state: WorkflowState):
        self.state = state
        # In whatever order the loader returned; ``active()`` sorts by creation where order matters.
        self.tokens: dict[str, Token] = dict(state.tokens)
        self.context: dict[str, Any] = dict(state.context)
        self.scopes: dict[str, dict[str, Any]] = dict(state.scopes)  # copy-on-write per scope
        self.fan_ins: dict[str, FanIn] = dict(sorted(state.fan_ins.items()))
        self.visits: dict[str, int] = dict(state.visits)
        self.seq = state.token_seq
        self.status = state.run.status
        self.owners: dict[str, str] = {t.wait["fan_id"]: t.id for t in self.tokens.values()
                                       if t.status in TOKEN_ACTIVE and t.wait and t.wait.get("kind") == "join"}
        self.items: list[d.Decision | IntrospectionEvent] = []
        """The plan so far: decisions, and the events that say why and what they did."""
        # What this step did beyond the state itself, for ``changes()``.
        self.created: dict[str, None] = {}
        self.errors: dict[str, Problem | None] = {}
        self.opened: dict[str, None] = {}
        self.fired: dict[str, FanIn] = {}
        self.closed: dict[str, None] = {}
        self.arrivals: list[tuple[str, int, str]] = []
        self.context_keys: dict[str, None] = {}
        """Root-scope keys written in this step, in order."""
        self.scope_origin: dict[str, tuple[str, int]] = {}
        self.dropped: dict[str, None] = {}
        self.output: Any = None
        self.error: Problem | None = None

    def visits_of(self, scope: str | None, node_id: str) -> int:
        """How many times ``node_id`` was entered in ``scope``; a branch whose counters were not loaded asks for
        the whole state (a scope new in this step has none)."""
        key = visit_key(scope, node_id)
        if scope and key not in self.visits and scope not in self.state.visit_scopes:
            self.require_whole()
        return self.visits.get(key, 0)

    def require_whole(self) -> None:
        """Ask for the whole state unless it was loaded (see ``NeedsWholeState``)."""
        if not self.state.whole:
            raise NeedsWholeState

    def active(self) -> list[Token]:
        """Tokens still active, in creation order (planning must not depend on a database's row order)."""
        self.require_whole()
        return sorted((t for t in self.tokens.values() if t.status in TOKEN_ACTIVE), key=lambda t: token_seq_of(t.id))

    def idle(self) -> bool:
        """Whether no token is active any more."""
        self.require_whole()
        return not any(t.status in TOKEN_ACTIVE for t in self.tokens.values())

    def mutate(self, decision: d.Decision) -> None:
        """Apply one decision to the copy (decisions with only outside effects change nothing here)."""
        fn = TRANSITIONS.get(type(decision))
        if fn is not None:
            fn(self, decision)

    def op(self, type_: str, token_id: str | None = None, node_id: str | None = None, **data: Any) -> None:
        """Record an ``operation.*`` event of this step: what a decision did to the state."""
        run = self.state.run
        self.items.append(IntrospectionEvent(type_, run.id, data, token_id, node_id, run.parent_run_id))

    def write(self, scope: str | None, key: str, value: Any) -> None:
        """``context[key] = value`` in the root (``scope=None``) or a branch scope."""
        if scope is None:
            self.context[key] = value
            self.context_keys[key] = None  # phase 1 writes only the keys a step wrote
        else:
            self.scopes[scope] = {**self.scopes.get(scope, {}), key: value}  # copy-on-write: a new dict is a change

    def set_token(self, token_id: str, **changes: Any) -> None:
        """Replace a token with some fields changed."""
        self.tokens[token_id] = replace(self.tokens[token_id], **changes)

    def run_status(self) -> str:
        """The run's status after this step: terminal or pending as decided, else waiting when every active
        token waits for something outside the run, else running."""
        if self.status in RUN_TERMINAL or self.status == RUN_PENDING:
            return self.status
        working, waiting = self.state.unloaded  # active tokens a partial state left out
        active = [t for t in self.tokens.values() if t.status in TOKEN_ACTIVE]
        if working or not (active or waiting):
            return RUN_RUNNING
        return RUN_WAITING if all(t.status == WAITING for t in active) else RUN_RUNNING

    def freeze(self) -> WorkflowState:
        """The state ``load_state`` would read after phase 1 committed these decisions."""
        active = {k: t for k, t in self.tokens.items() if t.status in TOKEN_ACTIVE}
        open_fans = {k: f for k, f in self.fan_ins.items() if not f.fired}
        run = replace(self.state.run, status=self.run_status(), version=self.state.run.version + 1)
        return replace(self.state, run=run, context=dict(self.context), visits=dict(self.visits), tokens=active,
                       fan_ins=open_fans, scopes=dict(self.scopes) if open_fans else {}, token_seq=self.seq)

    def changes(self) -> Changes:
        """The difference between the loaded state and this one, as phase 1 writes it."""
        before = self.state
        status = self.run_status()
        ended = status in RUN_TERMINAL and before.run.status not in RUN_TERMINAL
        run = {"status": status, "token_seq": self.seq, "open_fans": len(self.fan_ins),
               "visits": {k: n for k, n in self.visits.items() if not visit_scope(k)}}
        if ended:
            run.update(output=self.output, error=self.error.to_dict() if self.error else None)
        updates = []
        for token_id, token in self.tokens.items():
            old = before.tokens.get(token_id)
            if token_id in self.created or token is old:
                continue
            changed = {f: getattr(token, f) for f in _TOKEN_FIELDS
                       if old is None or getattr(token, f) != getattr(old, f)}
            if token_id in self.errors:
                changed["error"] = _as_dict(self.errors[token_id])
            updates.append((token_id, changed))
        active_delta = waiting_delta = 0
        for token_id, token in self.tokens.items():
            old = None if token_id in self.created else before.tokens.get(token_id)
            if token is not old:
                active_delta += (token.status in TOKEN_ACTIVE) - (old is not None and old.status in TOKEN_ACTIVE)
                waiting_delta += (token.status == WAITING) - (old is not None and old.status == WAITING)
        fans = {**self.fan_ins, **self.fired}
        new_scopes = tuple((s, *self.scope_origin[s], self.scopes[s]) for s in self.scope_origin
                           if s not in self.dropped)
        return Changes(
            run=run, ended=ended,
            context={k: self.context[k] for k in self.context_keys},
            new_tokens=tuple((self.tokens[t], _as_dict(self.errors.get(t))) for t in self.created),
            token_updates=tuple(updates),
            new_fans=tuple(fans[f] for f in self.opened if f not in self.closed),
            fan_updates=tuple((fan_id, fan.count, fan.fired) for fan_id, fan in fans.items()
                              if fan_id not in self.opened and _changed(fan, before.fan_ins.get(fan_id))),
            arrivals=tuple(a for a in self.arrivals if a[0] not in self.closed),
            closed_fans=tuple(f for f in self.closed if f not in self.opened),
            new_scopes=new_scopes,
            scope_updates=tuple((s, data) for s, data in self.scopes.items()
                                if s in before.scopes and data is not before.scopes[s] and s not in self.dropped),
            dropped_scopes=tuple(s for s in self.dropped if s not in self.scope_origin),
            active_delta=active_delta, waiting_delta=waiting_delta,
            branch_visits=tuple((*k.rpartition("/")[::2], n, k in before.visits)
                                for k, n in self.visits.items() if visit_scope(k) and before.visits.get(k) != n),
        )


def _as_dict(error: Problem | None) -> dict[str, Any] | None:
    return None if error is None else error.to_dict()


def _changed(fan: FanIn, before: FanIn | None) -> bool:
    """Whether phase 1 has a fan-in row to update: its count or its firing (not which arrivals were loaded)."""
    return before is None or (fan.count, fan.fired) != (before.count, before.fired)


# -- one transition per decision type ----------------------------------------------------------------
def _initialize(w: WorkingCopy, _: d.InitializeWorkflow) -> None:
    w.status = RUN_RUNNING
    w.op("operation.workflow.initialize", workflow=w.state.definition.name, version=w.state.definition.version)


def _create_token(w: WorkingCopy, x: d.CreateToken) -> None:
    t = x.token
    w.tokens[t.id] = t
    w.created[t.id] = None
    w.visits[visit_key(t.scope, t.node_id)] = t.iteration + 1
    w.seq = max(w.seq, token_seq_of(t.id))
    w.op("operation.tokens.create", t.id, t.node_id, status=t.status, scope=t.scope, iteration=t.iteration)


def _update_token(w: WorkingCopy, x: d.UpdateTokenStatus) -> None:
    before = w.tokens[x.token_id].status if x.token_id in w.tokens else None
    w.set_token(x.token_id, status=x.status, output=x.output)
    w.errors[x.token_id] = x.error
    w.op("operation.tokens.update_status", x.token_id, **{"from": before, "to": x.status})


def _mark_waiting(w: WorkingCopy, x: d.MarkWaiting) -> None:
    w.set_token(x.token_id, status=WAITING, wait=x.wait)
    if x.wait.get("kind") == "join":
        w.owners[x.wait["fan_id"]] = x.token_id
    w.op("operation.tokens.mark_waiting", x.token_id, wait=x.wait)


def _set_context(w: WorkingCopy, x: d.SetContext | d.ApplyOutputMapping | d.ApplyBranchOutput) -> None:
    w.write(x.scope, x.key, x.value)
    w.op("operation.context.set" if x.scope is None else "operation.context.write", getattr(x, "token_id", None),
         key=x.key, scope=x.scope)


def _dispatch(w: WorkingCopy, x: d.DispatchToken) -> None:
    w.set_token(x.token_id, status=DISPATCHED, assignment_id=x.assignment_id)


def _alarm(w: WorkingCopy, x: d.ScheduleAlarm) -> None:
    w.op("operation.alarm.schedule", x.token_id, purpose=x.purpose, fire_at=x.fire_at)


def _cancel(w: WorkingCopy, x: d.CancelActiveTokens) -> None:
    for token_id in x.token_ids:
        w.set_token(token_id, status=CANCELLED)
    w.op("operation.tokens.cancel", token_ids=list(x.token_ids), reason=x.reason)


def _finish(status: str) -> Callable[[WorkingCopy, Any], None]:
    verb = {RUN_COMPLETED: "complete", RUN_FAILED: "fail", RUN_CANCELLED: "cancel"}[status]

    def finish(w: WorkingCopy, x: d.CompleteWorkflow | d.FailWorkflow | d.CancelWorkflow) -> None:
        w.status = status
        w.output = x.output if isinstance(x, d.CompleteWorkflow) else None
        w.error = (x.error if isinstance(x, d.FailWorkflow) else
                   Problem("cancelled", x.reason) if isinstance(x, d.CancelWorkflow) else None)
        w.op(f"operation.workflow.{verb}", status=status, **({"error": w.error.to_dict()} if w.error else {}))
    return finish


def _init_branch(w: WorkingCopy, x: d.InitBranchTable) -> None:
    w.scopes[x.scope] = dict(x.data)
    w.scope_origin[x.scope] = (x.fan_id, x.branch_index)
    w.op("operation.context.branch_table.create", node_id=None, scope=x.scope, fan_id=x.fan_id,
         branch_index=x.branch_index)


def _merge(w: WorkingCopy, x: d.MergeBranches) -> None:
    w.op("operation.context.merge.start", fan_id=x.fan_id, key=x.key, branches=len(x.branches), into=x.scope)
    w.write(x.scope, x.key, list(x.rows))
    w.op("operation.context.merge.complete", fan_id=x.fan_id, key=x.key, rows=len(x.rows),
         keys=sum(len(r) for r in x.rows if isinstance(r, dict)))


def _drop_scopes(w: WorkingCopy, x: d.DropBranchTables) -> None:
    prefixes = tuple(f"{s}/" for s in x.scopes)
    for key in [k for k in w.visits if k.startswith(prefixes)]:
        del w.visits[key]  # a dropped branch's loop counters would otherwise grow the run row forever
    for scope in x.scopes:
        w.scopes.pop(scope, None)
        w.dropped[scope] = None
        w.op("operation.context.branch_table.drop", scope=scope, fan_id=x.fan_id, reason=x.reason)


def _open_fan(w: WorkingCopy, x: d.OpenFanIn) -> None:
    w.fan_ins[x.fan_id] = FanIn(x.fan_id, x.join_node, x.expected, owner=x.owner_token_id)
    w.opened[x.fan_id] = None
    w.op("operation.fan_in.open", x.owner_token_id, fan_id=x.fan_id, join=x.join_node, expected=x.expected)


def _arrive(w: WorkingCopy, x: d.RecordArrival) -> None:
    fan = w.fan_ins[x.fan_id]
    w.fan_ins[x.fan_id] = fan = replace(fan, arrived=fan.arrived | {x.branch_index}, count=fan.count + 1)
    w.arrivals.append((x.fan_id, x.branch_index, x.token_id))
    w.op("operation.fan_in.arrive", x.token_id, fan_id=x.fan_id, branch_index=x.branch_index, arrived=fan.count)


def _fire(w: WorkingCopy, x: d.FireJoin) -> None:
    fan = w.fan_ins.pop(x.fan_id)
    w.owners.pop(x.fan_id, None)
    w.fired[x.fan_id] = replace(fan, fired=True)
    w.op("operation.fan_in.fire", node_id=x.join_node, fan_id=x.fan_id, arrived=fan.count)


def _close_fan(w: WorkingCopy, x: d.CloseFanIn) -> None:
    w.fan_ins.pop(x.fan_id, None)
    w.owners.pop(x.fan_id, None)
    w.closed[x.fan_id] = None
    w.op("operation.fan_in.close", fan_id=x.fan_id, reason=x.reason)


def _start_child(w: WorkingCopy, x: d.StartSubworkflow) -> None:
    w.set_token(x.token_id, status=WAITING, child_run_id=x.child_run_id)
    w.op("operation.subworkflow.create", x.token_id, child_run_id=x.child_run_id, workflow=x.workflow,
         version=x.version)


def _request_approval(w: WorkingCopy, x: d.RequestApproval) -> None:
    w.op("operation.approval.create", x.token_id, x.node_id, approval_id=x.approval_id, expires_at=x.expires_at)


def _resolve_approval(w: WorkingCopy, x: d.ResolveApproval) -> None:
    w.op("operation.approval.resolve", approval_id=x.approval_id, status=x.status, by=x.by)


TRANSITIONS: dict[type, Callable[[WorkingCopy, Any], None]] = {
    d.InitializeWorkflow: _initialize,
    d.CreateToken: _create_token,
    d.UpdateTokenStatus: _update_token,
    d.MarkWaiting: _mark_waiting,
    d.SetContext: _set_context,
    d.ApplyOutputMapping: _set_context,
    d.ApplyBranchOutput: _set_context,
    d.DispatchToken: _dispatch,
    d.ScheduleAlarm: _alarm,
    d.CancelActiveTokens: _cancel,
    d.CompleteWorkflow: _finish(RUN_COMPLETED),
    d.FailWorkflow: _finish(RUN_FAILED),
    d.CancelWorkflow: _finish(RUN_CANCELLED),
    d.InitBranchTable: _init_branch,
    d.MergeBranches: _merge,
    d.DropBranchTables: _drop_scopes,
    d.OpenFanIn: _open_fan,
    d.RecordArrival: _arrive,
    d.FireJoin: _fire,
    d.CloseFanIn: _close_fan,
    d.StartSubworkflow: _start_child,
    d.RequestApproval: _request_approval,
    d.ResolveApproval: _resolve_approval,
}
"""What each decision does to the state, and the ``operation.*`` events that say so. ``Notify``,
``AbandonAssignments`` and ``SettleAssignment`` change nothing planning sees: only phase 1 acts on them."""
