"""The working copy: what each decision does to an in-memory view of a run's state.

The plan builder keeps it in step while planning (so that a later decision of the same plan sees an
earlier one), and replay uses the very same functions as ``apply_to_state`` to rebuild the state before
each recorded event. Phase 1 (``coordinator.apply``) is the SQL mirror of this module; a test keeps the
two in agreement by replaying recorded runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

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


def visit_key(scope: str | None, node_id: str) -> str:
    """The key of ``visits`` that counts entries of ``node_id`` in ``scope`` (loop bounds)."""
    return f"{scope or ''}/{node_id}"


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

    def active(self) -> list[Token]:
        """Tokens still active, in creation order (planning must not depend on a database's row order)."""
        return sorted((t for t in self.tokens.values() if t.status in TOKEN_ACTIVE), key=lambda t: token_seq_of(t.id))

    def idle(self) -> bool:
        """Whether no token is active any more."""
        return not any(t.status in TOKEN_ACTIVE for t in self.tokens.values())

    def mutate(self, decision: d.Decision) -> None:
        """Apply one decision to the copy (decisions that change nothing planning sees are skipped)."""
        fn = MUTATORS.get(type(decision))
        if fn is not None:
            fn(self, decision)

    def write(self, scope: str | None, key: str, value: Any) -> None:
        """``context[key] = value`` in the root (``scope=None``) or a branch scope."""
        if scope is None:
            self.context[key] = value
        else:
            self.scopes[scope] = {**self.scopes.get(scope, {}), key: value}

    def set_token(self, token_id: str, **changes: Any) -> None:
        """Replace a token with some fields changed."""
        self.tokens[token_id] = replace(self.tokens[token_id], **changes)

    def freeze(self) -> WorkflowState:
        """The state ``load_state`` would read after phase 1 committed these decisions."""
        status = self.status
        active = {k: t for k, t in self.tokens.items() if t.status in TOKEN_ACTIVE}
        if status not in RUN_TERMINAL and status != RUN_PENDING:
            waiting = bool(active) and all(t.status == WAITING for t in active.values())
            status = RUN_WAITING if waiting else RUN_RUNNING
        open_fans = {k: f for k, f in self.fan_ins.items() if not f.fired}
        run = replace(self.state.run, status=status, version=self.state.run.version + 1)
        return replace(self.state, run=run, context=dict(self.context), visits=dict(self.visits), tokens=active,
                       fan_ins=open_fans, scopes=dict(self.scopes) if open_fans else {}, token_seq=self.seq)


# -- one mutator per decision type that changes what planning sees -------------------------------------
def _create_token(w: WorkingCopy, x: d.CreateToken) -> None:
    t = x.token
    w.tokens[t.id] = t
    w.visits[visit_key(t.scope, t.node_id)] = t.iteration + 1
    w.seq = max(w.seq, token_seq_of(t.id))


def _update_token(w: WorkingCopy, x: d.UpdateTokenStatus) -> None:
    w.set_token(x.token_id, status=x.status, output=x.output)


def _mark_waiting(w: WorkingCopy, x: d.MarkWaiting) -> None:
    w.set_token(x.token_id, status=WAITING, wait=x.wait)
    if x.wait.get("kind") == "join":
        w.owners[x.wait["fan_id"]] = x.token_id


def _dispatch(w: WorkingCopy, x: d.DispatchToken) -> None:
    w.set_token(x.token_id, status=DISPATCHED, assignment_id=x.assignment_id)


def _cancel(w: WorkingCopy, x: d.CancelActiveTokens) -> None:
    for token_id in x.token_ids:
        w.set_token(token_id, status=CANCELLED)


def _start_child(w: WorkingCopy, x: d.StartSubworkflow) -> None:
    w.set_token(x.token_id, child_run_id=x.child_run_id)


def _open_fan(w: WorkingCopy, x: d.OpenFanIn) -> None:
    w.fan_ins[x.fan_id] = FanIn(x.fan_id, x.join_node, x.expected)


def _arrive(w: WorkingCopy, x: d.RecordArrival) -> None:
    fan = w.fan_ins[x.fan_id]
    w.fan_ins[x.fan_id] = replace(fan, arrived=(*fan.arrived, x.branch_index))


def _forget_fan(w: WorkingCopy, x: d.FireJoin | d.CloseFanIn) -> None:
    w.fan_ins.pop(x.fan_id, None)
    w.owners.pop(x.fan_id, None)


def _drop_scopes(w: WorkingCopy, x: d.DropBranchTables) -> None:
    prefixes = tuple(f"{s}/" for s in x.scopes)
    for scope in x.scopes:
        w.scopes.pop(scope, None)
    # Loop counters of a dropped branch would otherwise grow the run row forever.
    for key in [k for k in w.visits if k.startswith(prefixes)]:
        del w.visits[key]


def _set_status(status: str) -> Callable[[WorkingCopy, Any], None]:
    def set_status(w: WorkingCopy, _x: Any) -> None:
        w.status = status
    return set_status


MUTATORS: dict[type, Callable[[WorkingCopy, Any], None]] = {
    d.InitializeWorkflow: _set_status(RUN_RUNNING),
    d.CreateToken: _create_token,
    d.UpdateTokenStatus: _update_token,
    d.MarkWaiting: _mark_waiting,
    d.DispatchToken: _dispatch,
    d.CancelActiveTokens: _cancel,
    d.StartSubworkflow: _start_child,
    d.SetContext: lambda w, x: w.write(x.scope, x.key, x.value),
    d.ApplyOutputMapping: lambda w, x: w.write(x.scope, x.key, x.value),
    d.ApplyBranchOutput: lambda w, x: w.write(x.scope, x.key, x.value),
    d.InitBranchTable: lambda w, x: w.scopes.__setitem__(x.scope, dict(x.data)),
    d.MergeBranches: lambda w, x: w.write(x.scope, x.key, list(x.rows)),
    d.DropBranchTables: _drop_scopes,
    d.OpenFanIn: _open_fan,
    d.RecordArrival: _arrive,
    d.FireJoin: _forget_fan,
    d.CloseFanIn: _forget_fan,
    d.CompleteWorkflow: _set_status(RUN_COMPLETED),
    d.FailWorkflow: _set_status(RUN_FAILED),
    d.CancelWorkflow: _set_status(RUN_CANCELLED),
}
"""Decisions that only have outside effects (dispatch rows, alarms, notifications, approvals rows) are
absent or only touch the token: planning never reads those back."""


def apply_to_state(state: WorkflowState, decisions: list[d.Decision]) -> WorkflowState:
    """The state after ``decisions`` were applied: phase 1 and ``load_state``, in memory (for replay)."""
    w = WorkingCopy(state)
    for decision in decisions:
        w.mutate(decision)
    return w.freeze()
