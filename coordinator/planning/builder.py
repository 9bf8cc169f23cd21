"""A plan under construction: a working copy of the state that decisions update as they are made.

Planning stays a pure function: the builder is created from the state and the event, mutated only by
the planning code of this one call, and frozen into a ``Plan`` at the end. Ids are derived from the run
and a per-run sequence, never random, so that replaying the same events yields the same decisions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from bus.introspection import IntrospectionEvent
from coordinator.decisions import Decision
from coordinator.planning.working import Changes, WorkingCopy
from coordinator.state import Token, WorkflowState

Item = Decision | IntrospectionEvent


@dataclass(frozen=True)
class Plan:
    """Planning's answer: decisions and introspection events in the order they were made, the state they lead
    to, and the difference from the loaded state that phase 1 writes."""

    items: tuple[Item, ...]
    next_state: WorkflowState
    """What ``load_state`` reads once phase 1 committed."""
    changes: Changes

    @property
    def decisions(self) -> list[Decision]:
        """Only the decisions."""
        return [i for i in self.items if isinstance(i, Decision)]

    @property
    def events(self) -> list[IntrospectionEvent]:
        """Only the introspection events."""
        return [i for i in self.items if isinstance(i, IntrospectionEvent)]


class PlanBuilder(WorkingCopy):
    """Collects decisions and events while keeping a view of the state as they change it."""

    def __init__(self, state: WorkflowState, *, now: float):
        super().__init__(state)
        self.now = now
        self.definition = state.definition
        self.run = state.run

    # -- output --------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """Freeze what was planned."""
        return Plan(tuple(self.items), self.freeze(), self.changes())

    def decide(self, decision: Decision) -> Decision:
        """Record a decision and keep the working copy in step with it (its ``operation.*`` events follow it)."""
        self.items.append(decision)
        self.mutate(decision)
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

    def owner_of(self, fan_id: str | None) -> Token | None:
        """The token that waits for the join of ``fan_id`` (the fan-out's own token)."""
        token_id = self.owners.get(fan_id) if fan_id else None
        return self.tokens.get(token_id) if token_id else None

    def scope_chain(self, token: Token) -> list[str]:
        """The branch scopes a token sees, outermost first (nested fan-outs see their parents')."""
        chain: list[str] = []
        scope, fan_id = token.scope, token.fan_id
        while scope is not None:
            chain.append(scope)
            owner = self.owner_of(fan_id)
            if owner is None:
                break
            scope, fan_id = owner.scope, owner.fan_id
        return chain[::-1]

    def scope_view(self, token: Token | None, **extra: Any) -> dict[str, Any]:
        """What expressions see: ``input``, ``context`` (the root merged with the token's branch scopes),
        ``scope`` (the branch's own data), ``item`` and ``index`` in a branch, and anything in ``extra``."""
        if token is None or token.scope is None:
            return {"input": dict(self.run.input), "context": self.context, "scope": {}, **extra}
        merged = dict(self.context)
        for scope in self.scope_chain(token):
            merged.update(self.scopes.get(scope, {}))
        return {"input": dict(self.run.input), "context": merged, "scope": self.scopes.get(token.scope, {}),
                "item": merged.get("item"), "index": merged.get("index"), **extra}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
