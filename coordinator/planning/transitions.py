"""Routing: entering nodes, finishing tokens and choosing the next node by the transitions' conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus.errors import ContractError, Problem
from coordinator import decisions as d
from coordinator.definitions import EndNode, GateNode, NotifyNode, TaskNode, Transition
from coordinator.expressions import evaluate, render, truthy
from coordinator.planning.builder import PlanBuilder
from coordinator.planning.scopes import branch_of, drop_fan, unreachable
from coordinator.state import COMPLETED, FAILED, PENDING, RUN_TERMINAL, Token, token_seq_of

EntryRule = Callable[[PlanBuilder, Token, Any], None]
ENTRY_RULES: dict[str, EntryRule] = {}
"""What entering a node of each kind decides; the planning modules register theirs."""


def entry_rule(kind: str) -> Callable[[EntryRule], EntryRule]:
    """Register the rule for entering nodes of ``kind``."""
    def register(fn: EntryRule) -> EntryRule:
        ENTRY_RULES[kind] = fn
        return fn
    return register


def place(b: PlanBuilder, node_id: str, *, scope: str | None = None, fan_id: str | None = None,
          branch_index: int | None = None) -> Token | None:
    """Create a token at ``node_id`` (counting the visit against the loop bound), without entering it.

    Returns:
        The new token, or None when the loop bound stopped the run.
    """
    visits = b.visits_of(scope, node_id) + 1
    if visits > 1 + b.definition.max_loops:
        fail_workflow(b, Problem("loop.max_feedback_loops",
                                 f"node {node_id!r} would run {visits} times; the workflow allows "
                                 f"{b.definition.max_loops} loops", details={"node": node_id}))
        return None
    token = Token(id=b.next_token_id(node_id), node_id=node_id, status=PENDING, scope=scope, fan_id=fan_id,
                  branch_index=branch_index, iteration=visits - 1)
    b.decide(d.CreateToken(token))
    return token


def enter(b: PlanBuilder, node_id: str, *, scope: str | None = None, fan_id: str | None = None,
          branch_index: int | None = None, came_from: str | None = None) -> Token | None:
    """Create a token at ``node_id`` and decide what entering it means.

    Returns:
        The new token, or None when the loop bound stopped the run.
    """
    token = place(b, node_id, scope=scope, fan_id=fan_id, branch_index=branch_index)
    if token is None:
        return None
    node = b.definition.node(node_id)
    rule = ENTRY_RULES.get(node.kind)
    if rule is None:
        fail_workflow(b, Problem("node.unsupported", f"no planner for node kind {node.kind!r}",
                                 details={"node": node_id}))
        return None
    rule(b, token, node)
    return token


FAILED_EXPRESSION = object()
"""What ``computed`` returns when the expression failed and the run's failure plan was made."""


def computed(b: PlanBuilder, token: Token, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` — an expression evaluated or a mapping rendered — or, when it fails, the run's failure
    plan and ``FAILED_EXPRESSION``: a failing expression is a domain failure, a decision, not an exception."""
    try:
        return fn(*args)
    except ContractError as exc:
        fail_workflow(b, Problem(exc.code, str(exc), details={"node": token.node_id}))
        return FAILED_EXPRESSION


def finish_token(b: PlanBuilder, token: Token, *, output: Any = None, key: str | None = None) -> None:
    """Mark a token completed and put its output in its scope's context under ``key``."""
    b.decide(d.UpdateTokenStatus(token.id, COMPLETED, output=output))
    if key is not None:
        write_output(b, token, key, output)


def write_output(b: PlanBuilder, token: Token, key: str, value: Any) -> None:
    """Put a value in the token's scope: the root context, or its own branch scope."""
    if token.scope is None:
        b.decide(d.ApplyOutputMapping(token.id, key, value))
    else:
        b.decide(d.ApplyBranchOutput(token.id, token.scope, key, value))


def choose(b: PlanBuilder, token: Token, transitions: list[Transition], *, output: Any = None) -> str | None:
    """The first transition whose condition holds, with an event for every one evaluated."""
    view = b.scope_view(token, output=output)
    for index, transition in enumerate(transitions):
        if transition.when is None:
            matched, seen = True, None
        else:
            seen = computed(b, token, evaluate, transition.when, view)
            if seen is FAILED_EXPRESSION:
                return None
            matched = truthy(seen)
        b.emit("decision.routing.evaluate_transition", token=token, index=index, to=transition.to,
               condition=transition.when, value=seen, matched=matched)
        if matched:
            rejected = [t.to for t in transitions[index + 1:]]
            b.emit("decision.routing.transition_matched", token=token, to=transition.to, spawn_count=1,
                   rejected=rejected)
            return transition.to
    return None


def advance(b: PlanBuilder, token: Token, transitions: list[Transition], *, output: Any = None) -> None:
    """After ``token`` finished: enter the next node, or end this path."""
    if not transitions:
        b.emit("decision.routing.path_end", token=token, reason="node has no transitions")
        why = unreachable(b, token.fan_id) if token.fan_id else None
        if why:
            fail_workflow(b, Problem("join.unreachable", why, details={"node": token.node_id}))
            return
        close_if_idle(b)
        return
    target = choose(b, token, transitions, output=output)
    if b.status in RUN_TERMINAL:
        return
    if target is None:
        fail_workflow(b, Problem("routing.no_match", f"no transition of node {token.node_id!r} matched",
                                 details={"node": token.node_id}))
        return
    enter(b, target, scope=token.scope, fan_id=token.fan_id, branch_index=token.branch_index,
          came_from=token.id)


def close_if_idle(b: PlanBuilder) -> None:
    """Complete the run when nothing is active any more (an implicit end)."""
    if b.status not in RUN_TERMINAL and b.idle():
        complete_workflow(b, dict(b.context), reason="no active tokens remain")


def complete_workflow(b: PlanBuilder, output: Any, *, reason: str) -> None:
    """The run completes; whatever is still active is cancelled."""
    cancel_others(b, reason="workflow completed")
    b.emit("decision.workflow.complete", reason=reason)
    b.decide(d.CompleteWorkflow(output))
    b.status = "completed"


def fail_workflow(b: PlanBuilder, error: Problem) -> None:
    """The failure plan, every decision up front: cancel what is active, fail the run."""
    if b.status in RUN_TERMINAL:
        return
    cancel_others(b, reason=f"workflow failed: {error.code}")
    b.emit("decision.workflow.fail", reason=error.message, error=error.to_dict())
    b.decide(d.FailWorkflow(error))
    b.status = "failed"


def cancel_others(b: PlanBuilder, *, reason: str) -> None:
    """Cancel every active token (and so every open join and pending approval of the run)."""
    cancel_tokens(b, b.active(), reason=reason)


def cancel_tokens(b: PlanBuilder, victims: list[Token], *, reason: str) -> None:
    """Cancel these tokens, resolve the approvals they wait for and drop the fan-outs they own."""
    victims = _with_branches(b, victims)
    if not victims:
        return
    ids = tuple(t.id for t in victims)
    b.emit("decision.tokens.cancel", token_ids=list(ids), reason=reason)
    b.decide(d.CancelActiveTokens(ids, reason))
    abandon_assignments(b, victims, reason=reason)
    for t in victims:
        wait = t.wait or {}
        if wait.get("kind") == "approval":
            b.decide(d.ResolveApproval(wait["approval_id"], "cancelled", by="cogo", comment=reason))
        elif wait.get("kind") == "join":
            drop_fan(b, wait["fan_id"], reason=f"owner cancelled: {reason}", fired=False)


def abandon_assignments(b: PlanBuilder, ended: list[Token], *, reason: str) -> None:
    """Take back the assignments of tokens that ended before their work did: nobody will read their outcome."""
    held = tuple(t.assignment_id for t in ended if t.assignment_id)
    if held:
        b.emit("decision.assignment.abandon", assignment_ids=list(held), reason=reason)
        b.decide(d.AbandonAssignments(held, reason))


def _with_branches(b: PlanBuilder, victims: list[Token]) -> list[Token]:
    """A cancelled fan-out takes its branches (and theirs) with it: no token may outlive its scope."""
    fans = [t.wait["fan_id"] for t in victims if (t.wait or {}).get("kind") == "join"]
    if not fans:
        return victims
    chosen = {t.id for t in victims}
    extra = [t for t in b.active() if t.id not in chosen and any(branch_of(b, t, f) is not None for f in fans)]
    return sorted([*victims, *extra], key=lambda t: token_seq_of(t.id)) if extra else victims


# -- node kinds that need nothing from the outside world ----------------------------------------------
@entry_rule("task")
def _enter_task(b: PlanBuilder, token: Token, node: TaskNode) -> None:
    payload = computed(b, token, render, node.input, b.scope_view(token))
    if payload is FAILED_EXPRESSION:
        return
    assignment_id = b.derived_id(token.id, "assignment")
    b.emit("decision.task.dispatch", token=token, route=f"{node.route.service}.{node.route.role}",
           agent_id=node.agent.agent_id, model=node.agent.model, max_attempts=node.retry.maximum_attempts,
           reason="entered task node")
    b.decide(d.DispatchToken(token.id, token.node_id, assignment_id, node.route.service, node.route.role,
                             payload, node.agent.assignment().wire(), node.retry.maximum_attempts,
                             node.retry.model_dump()))
    if node.timeout_ms:
        b.decide(d.ScheduleAlarm(token.id, b.now + node.timeout_ms / 1000, "timeout",
                                 b.derived_id(token.id, "timeout")))


@entry_rule("end")
def _enter_end(b: PlanBuilder, token: Token, node: EndNode) -> None:
    output = computed(b, token, render, node.output, b.scope_view(token)) if node.output is not None \
        else dict(b.context)
    if output is FAILED_EXPRESSION:
        return
    finish_token(b, token)
    if node.status == "failed":
        fail_workflow(b, Problem(node.code or "workflow.end_failed",
                                 node.message or f"reached end node {token.node_id!r} with status failed",
                                 details={"node": token.node_id, "output": output}))
    else:
        complete_workflow(b, output, reason=f"reached end node {token.node_id!r}")


@entry_rule("gate")
def _enter_gate(b: PlanBuilder, token: Token, node: GateNode) -> None:
    view = b.scope_view(token)
    try:
        if node.condition is not None:
            value = evaluate(node.condition, view)
            passed, detail = truthy(value), {"condition": node.condition, "value": value}
        else:
            value = evaluate(node.success_rate.value, view)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            passed = ok and value >= node.success_rate.threshold
            detail = {"success_rate": node.success_rate.value, "value": value,
                      "threshold": node.success_rate.threshold}
    except ContractError as exc:
        fail_workflow(b, Problem(exc.code, str(exc), details={"node": token.node_id}))
        return
    target = node.on_pass if passed else node.on_fail
    b.emit("decision.gate.evaluate", token=token, passed=passed, to=target,
           rejected=node.on_fail if passed else node.on_pass, **detail)
    finish_token(b, token, output={"passed": passed, "value": value}, key=token.node_id)
    enter(b, target, scope=token.scope, fan_id=token.fan_id, branch_index=token.branch_index)


@entry_rule("notify")
def _enter_notify(b: PlanBuilder, token: Token, node: NotifyNode) -> None:
    message = computed(b, token, render, node.message, b.scope_view(token))
    if message is FAILED_EXPRESSION:
        return
    b.emit("decision.notify.publish", token=token, channel=node.channel)
    b.decide(d.Notify(node.channel, {"run_id": b.run.id, "node": token.node_id, "message": message}))
    finish_token(b, token)
    advance(b, token, node.next)


__all__ = ["ENTRY_RULES", "FAILED", "FAILED_EXPRESSION", "advance", "cancel_tokens", "choose", "close_if_idle",
           "complete_workflow", "computed", "enter", "entry_rule", "fail_workflow", "finish_token", "place",
           "write_output"]
