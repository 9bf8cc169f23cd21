"""Fan-out and fan-in (seed 000, phases 4 to 6): ``parallel`` and ``foreach`` spawn isolated branches,
``join`` waits for ``any``, ``all`` or ``m`` of them, merges their scopes and fires exactly once.

Once per run a join can fire: planning only fires a fan that is still open in the state, phase 1 flips
``fan_ins.fired`` only if it was false (or the transaction fails and the event is planned again), and the
decide row's inbox counts every arrival once.
"""

from __future__ import annotations

from typing import Any

from bus.errors import Problem
from coordinator import decisions as d
from coordinator.definitions import ForeachNode, JoinNode, ParallelNode
from coordinator.expressions import evaluate
from coordinator.planning.builder import PlanBuilder
from coordinator.planning.scopes import branch_of, drop_fan, fan_id_for, required, scope_id
from coordinator.planning.transitions import (
    FAILED_EXPRESSION,
    advance,
    cancel_tokens,
    computed,
    enter,
    entry_rule,
    fail_workflow,
    finish_token,
    place,
)
from coordinator.state import COMPLETED, RUN_TERMINAL, FanIn, Token

FOREACH_CEILING = 10_000
"""No ``foreach`` spawns more branches than this, whatever its definition's ``max_items`` says. A constant,
not a setting: planning is pure and a replay must decide as the run did."""


@entry_rule("parallel")
def _enter_parallel(b: PlanBuilder, token: Token, node: ParallelNode) -> None:
    spawn(b, token, node, [(start, {"branch": start, "index": i}) for i, start in enumerate(node.branches)])


@entry_rule("foreach")
def _enter_foreach(b: PlanBuilder, token: Token, node: ForeachNode) -> None:
    items = computed(b, token, evaluate, node.items, b.scope_view(token))
    if items is FAILED_EXPRESSION:
        return
    count = len(items) if isinstance(items, list) else None
    limit = min(node.max_items, FOREACH_CEILING)
    b.emit("decision.routing.evaluate_items", token=token, items=node.items, count=count, max_items=limit)
    if count is None:
        fail_workflow(b, Problem("foreach.not_a_list", f"items {node.items!r} gave {type(items).__name__}, not a list",
                                 details={"node": token.node_id}))
        return
    if count > limit:
        fail_workflow(b, Problem("foreach.too_many",
                                 f"items {node.items!r} gave {count} items; the most a foreach may spawn is {limit}",
                                 details={"node": token.node_id}))
        return
    named = {node.item_as: None} if node.item_as else {}
    spawn(b, token, node, [(node.body, {**{k: item for k in named}, "item": item, "index": i})
                           for i, item in enumerate(items)])


def spawn(b: PlanBuilder, owner: Token, node: ParallelNode | ForeachNode,
          branches: list[tuple[str, dict[str, Any]]]) -> None:
    """Open the join, create one scope per branch, then enter every branch's first node."""
    join: JoinNode = b.definition.node(node.join)
    n, need = len(branches), required(join, len(branches))
    b.emit("decision.routing.transition_matched", token=owner, to=sorted({start for start, _ in branches}),
           spawn_count=n, join=node.join, mode=join.mode, m=join.m, required=need)
    if need > n:
        fail_workflow(b, Problem("join.unreachable",
                                 f"join {node.join!r} needs {need} branches but only {n} were spawned",
                                 details={"node": owner.node_id}))
        return
    fan_id = fan_id_for(b, owner)
    b.decide(d.OpenFanIn(fan_id, node.join, n, owner.id))
    b.decide(d.MarkWaiting(owner.id, {"kind": "join", "fan_id": fan_id, "join": node.join}))
    if node.timeout_ms:
        b.decide(d.ScheduleAlarm(owner.id, b.now + node.timeout_ms / 1000, "timeout",
                                 b.derived_id(owner.id, "timeout")))
    scopes = [scope_id(b, fan_id, i) for i in range(n)]
    for i, (_, data) in enumerate(branches):
        b.decide(d.InitBranchTable(scopes[i], fan_id, i, data))
    if n == 0 or need == 0:
        check_and_fire(b, fan_id)
        return
    for i, (start, _) in enumerate(branches):
        enter(b, start, scope=scopes[i], fan_id=fan_id, branch_index=i)
        if fan_id not in b.fan_ins or b.status in RUN_TERMINAL:
            return  # an early branch already fired the join (any / m_of_n) or ended the run


@entry_rule("join")
def _enter_join(b: PlanBuilder, token: Token, node: JoinNode) -> None:
    fan = b.fan_ins.get(token.fan_id) if token.fan_id else None
    if fan is None or fan.join_node != token.node_id:
        b.emit("decision.sync.pass_through", token=token,
               reason="the token is not a branch of a fan-out that joins here")
        finish_token(b, token)
        advance(b, token, node.next)
        return
    b.emit("decision.sync.start", token=token, fan_id=fan.fan_id, branch_index=token.branch_index)
    finish_token(b, token)
    if token.branch_index in fan.arrived:  # loaded even in a partial state: the event's own branch
        b.emit("decision.sync.duplicate", token=token, fan_id=fan.fan_id, branch_index=token.branch_index,
               reason="this branch has already arrived")
        return
    b.decide(d.RecordArrival(fan.fan_id, token.branch_index, token.id))
    check_and_fire(b, fan.fan_id, token=token)


def check_and_fire(b: PlanBuilder, fan_id: str, *, token: Token | None = None) -> None:
    """Count the siblings that arrived; fire the join when its mode is satisfied, else wait. Counts only: which
    branches are missing is explain's question (``coordinator.explain``), not a list to build on every arrival."""
    fan = b.fan_ins[fan_id]
    join: JoinNode = b.definition.node(fan.join_node)
    need = required(join, fan.expected)
    counts = {"fan_id": fan_id, "mode": join.mode, "m": join.m, "arrived": fan.count, "expected": fan.expected,
              "required": need}
    b.emit("decision.sync.check_condition", token=token, node_id=fan.join_node, **counts,
           missing_count=fan.expected - fan.count)
    reason = f"{fan.count} of {fan.expected} arrived; {join.mode} needs {need}"
    if fan.count < need:
        b.emit("decision.sync.wait", token=token, node_id=fan.join_node, fan_id=fan_id, reason=reason)
        return
    b.emit("decision.sync.activate", token=token, node_id=fan.join_node, fan_id=fan_id, reason=reason)
    fire(b, fan, join)


def fire(b: PlanBuilder, fan: FanIn, join: JoinNode) -> None:
    """Merge, cancel the branches still running, drop the scopes, and go on from the join once (the one arrival
    that needs every branch's arrival and scope: the others load only their own)."""
    b.require_whole()
    owner = b.owner_of(fan.fan_id)
    branches = tuple(sorted(fan.arrived))
    rows = tuple(b.scopes.get(scope_id(b, fan.fan_id, i), {}) for i in branches)
    key = join.output or fan.join_node
    b.decide(d.MergeBranches(fan.fan_id, key, rows, branches, scope=owner.scope))
    late = [t for t in b.active() if t.id != owner.id and branch_of(b, t, fan.fan_id) is not None]
    cancel_tokens(b, late, reason=f"join {fan.join_node!r} fired ({join.mode})")
    drop_fan(b, fan.fan_id, reason=f"join {fan.join_node!r} fired", fired=True)
    b.decide(d.FireJoin(fan.fan_id, fan.join_node))
    b.decide(d.UpdateTokenStatus(owner.id, COMPLETED, output={"branches": len(branches)}))
    after = place(b, fan.join_node, scope=owner.scope, fan_id=owner.fan_id, branch_index=owner.branch_index)
    if after is not None:
        finish_token(b, after, output={"branches": list(branches)})
        advance(b, after, join.next)
