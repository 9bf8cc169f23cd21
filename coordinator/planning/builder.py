"""A plan under construction: a working copy of the state that decisions update as they are made.

Planning stays a pure function: the builder is created from the state and the event, mutated only by
the planning code of this one call, and frozen into a ``Plan`` at the end. Ids are derived from the run
and a per-run sequence, never random, so that replaying the same events yields the same decisions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from bus.introspection import IntrospectionEvent
from coordinator.decisions import (
    ApplyOutputMapping,
    CreateToken,
    Decision,
    MarkWaiting,
    SetContext,
    UpdateTokenStatus,
)
from coordinator.state import TOKEN_ACTIVE, FanIn, Token, WorkflowState

Item = Decision | IntrospectionEvent


@dataclass(frozen=True)
class Plan:
    """Planning's answer: decisions and introspection events, in the order they were made."""

    items: tuple[Item, ...]

    @property
    def decisions(self) -> list[Decision]:
        """Only the decisions."""
        return [i for i in self.items if isinstance(i, Decision)]

    @property
    def events(self) -> list[IntrospectionEvent]:
        """Only the introspection events."""
        return [i for i in self.items if isinstance(i, IntrospectionEvent)]


class PlanBuilder:
    """Collects decisions and events while keeping a view of the state as they change it."""

    def __init__(self, state: WorkflowState, *, now: float):
        self.state = state
        self.now = now
        self.definition = state.definition
        self.run = state.run
        self.items: list[Item] = []
        self.tokens: dict[str, Token] = dict(state.tokens)
        self.context: dict[str, Any] = dict(state.context)
        self.scopes: dict[str, dict[str, Any]] = {k: dict(v) for k, v in state.scopes.items()}
        self.fan_ins: dict[str, FanIn] = dict(state.fan_ins)
        self.visits: dict[str, int] = dict(state.visits)
        self.seq = state.token_seq
        self.status = state.run.status

    # -- output --------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """Freeze what was planned."""
        return Plan(tuple(self.items))

    def decide(self, decision: Decision) -> Decision:
        """Record a decision and keep the working copy in step with it."""
        self.items.append(decision)
        if isinstance(decision, CreateToken):
            self.tokens[decision.token.id] = decision.token
        elif isinstance(decision, UpdateTokenStatus):
            self.tokens[decision.token_id] = replace(self.tokens[decision.token_id], status=decision.status,
                                                     output=decision.output)
        elif isinstance(decision, MarkWaiting):
            self.tokens[decision.token_id] = replace(self.tokens[decision.token_id], status="waiting",
                                                     wait=decision.wait)
        elif isinstance(decision, (SetContext, ApplyOutputMapping)):
            target = self.context if decision.scope is None else self.scopes.setdefault(decision.scope, {})
            target[decision.key] = decision.value
        return decision

    def emit(self, type_: str, *, token: Token | None = None, node_id: str | None = None,
             **data: Any) -> None:
        """Record an introspection event of this run."""
        self.items.append(IntrospectionEvent(
            type_, self.run.id, data, token.id if token else None,
            node_id or (token.node_id if token else None), self.run.parent_run_id))

    # -- ids and views -------------------------------------------------------------------------------
    def next_token_id(self, node_id: str) -> str:
        """A new token id, unique in the run and the same on every replay."""
        self.seq += 1
        return f"{node_id}.{self.seq}"

    def derived_id(self, *parts: str) -> str:
        """A uuid derived from the run and ``parts`` (assignment, alarm, approval, child run ids)."""
        return str(uuid.uuid5(uuid.UUID(self.run.id) if _is_uuid(self.run.id) else uuid.NAMESPACE_URL,
                              "/".join((self.run.id, *parts))))

    def active(self) -> list[Token]:
        """Tokens still active in the working copy."""
        return [t for t in self.tokens.values() if t.status in TOKEN_ACTIVE]

    def scope_view(self, token: Token | None, **extra: Any) -> dict[str, Any]:
        """What expressions see: ``input``, ``context`` (the root merged with the token's branch scope),
        ``scope`` (the branch's own data) and anything in ``extra`` (``output``, ``item`` …)."""
        branch = self.scopes.get(token.scope, {}) if token and token.scope else {}
        merged = {**self.context, **branch} if branch else self.context
        return {"input": dict(self.run.input), "context": merged, "scope": branch, **extra}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
