"""Branch scopes and open joins: which branch a token belongs to, and how a fan-out's scopes are let go.

A fan-out's token (the *owner*) waits while its branches run. Every branch has its own scope, whose id
is derived from the fan and the branch index, so the scopes of a fan are known without a lookup table.
A token's ``fan_id`` is the fan whose branch scope it stands in; following owners upwards walks out of
nested fan-outs.
"""

from __future__ import annotations

from coordinator import decisions as d
from coordinator.definitions import JoinNode
from coordinator.planning.builder import PlanBuilder
from coordinator.state import Token

MAX_FAN_ID = 64
"""``fan_ins.fan_id`` is a VARCHAR(64)."""


def fan_id_for(b: PlanBuilder, owner: Token) -> str:
    """The fan id of a fan-out: its owner token's id when it fits, else a derived id."""
    return owner.id if len(owner.id) <= MAX_FAN_ID else b.derived_id(owner.id, "fan")


def scope_id(b: PlanBuilder, fan_id: str, index: int) -> str:
    """The id of branch ``index``'s scope (unique across runs: ``branch_scopes.id`` is the primary key)."""
    return b.derived_id(fan_id, "scope", str(index))


def fan_scopes(b: PlanBuilder, fan_id: str, expected: int) -> tuple[str, ...]:
    """The fan's branch scopes that still exist, in branch order."""
    b.require_whole()
    ids = (scope_id(b, fan_id, i) for i in range(expected))
    return tuple(s for s in ids if s in b.scopes)


def branch_of(b: PlanBuilder, token: Token, fan_id: str) -> int | None:
    """The branch of ``fan_id`` that ``token`` runs in (through nested fan-outs), or None."""
    current: Token | None = token
    while current is not None and current.fan_id is not None:
        if current.fan_id == fan_id:
            return current.branch_index
        current = b.owner_of(current.fan_id)
    return None


def required(join: JoinNode, expected: int) -> int:
    """How many arrivals fire the join: all of them, one (``any``), or ``m``."""
    if join.mode == "all":
        return expected
    if join.mode == "any":
        return min(1, expected)
    return join.m or 0


def drop_fan(b: PlanBuilder, fan_id: str, *, reason: str, fired: bool) -> None:
    """Let a fan's scopes go (on fire, or when its owner is cancelled)."""
    fan = b.fan_ins.get(fan_id)
    if fan is None:
        return
    scopes = fan_scopes(b, fan_id, fan.expected)
    if not fired:
        b.emit("decision.sync.abandon", node_id=fan.join_node, fan_id=fan_id, reason=reason,
               arrived=fan.count, expected=fan.expected)
        b.decide(d.CloseFanIn(fan_id, reason))
    if scopes:
        b.decide(d.DropBranchTables(fan_id, scopes, reason))


def unreachable(b: PlanBuilder, fan_id: str) -> str | None:
    """Why the join of ``fan_id`` can never fire now, or None while enough branches are alive (on the whole state:
    ``active()`` asks for it, so ``fan.arrived`` holds every arrival here)."""
    fan = b.fan_ins.get(fan_id)
    if fan is None:
        return None
    join = b.definition.node(fan.join_node)
    alive = {branch_of(b, t, fan_id) for t in b.active()} - {None} - fan.arrived
    need = required(join, fan.expected)
    if fan.count + len(alive) >= need:
        return None
    return (f"join {fan.join_node!r} ({join.mode}) needs {need} of {fan.expected} branches; "
            f"{fan.count} arrived and only {len(alive)} are still running")
