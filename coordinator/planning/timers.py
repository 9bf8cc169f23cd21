"""Time and the outside world: ``wait`` nodes (a durable timer or a named external event), node timeouts
and signals. A timer is a decide row due at ``fire_at`` (``ScheduleAlarm``); it outlives any process."""

from __future__ import annotations

from bus.errors import Problem
from coordinator import decisions as d
from coordinator import events as ev
from coordinator.definitions import SubworkflowNode, WaitNode
from coordinator.planning.builder import PlanBuilder
from coordinator.planning.people import on_approval_timeout
from coordinator.planning.tasks import on_task_timeout
from coordinator.planning.transitions import advance, cancel_tokens, enter, entry_rule, fail_workflow, finish_token
from coordinator.state import TOKEN_ACTIVE, WAITING, Token


@entry_rule("wait")
def _enter_wait(b: PlanBuilder, token: Token, node: WaitNode) -> None:
    if node.duration_ms is not None:
        fire_at = b.now + node.duration_ms / 1000
        b.emit("decision.wait.timer", token=token, duration_ms=node.duration_ms, fire_at=fire_at,
               reason="a wait node with duration_ms holds its path until the timer fires")
        b.decide(d.MarkWaiting(token.id, {"kind": "timer", "fire_at": fire_at}))
        b.decide(d.ScheduleAlarm(token.id, fire_at, "wait", b.derived_id(token.id, "wait")))
    else:
        b.emit("decision.wait.event", token=token, event=node.event,
               reason=f"a wait node holds its path until the signal {node.event!r} arrives")
        b.decide(d.MarkWaiting(token.id, {"kind": "event", "event": node.event}))
    if node.timeout_ms:
        b.decide(d.ScheduleAlarm(token.id, b.now + node.timeout_ms / 1000, "timeout",
                                 b.derived_id(token.id, "timeout")))


def on_timer(b: PlanBuilder, event: ev.Timer) -> None:
    """A durable timer fired: a wait elapsed, a node timed out, or an approval expired."""
    token = b.tokens.get(event.token_id)
    if token is None or token.status not in TOKEN_ACTIVE:
        b.emit("decision.event.ignored", kind=event.kind, token_id=event.token_id, purpose=event.purpose,
               reason="timer for a token that is no longer active")
        return
    if event.purpose == "wait":
        _wait_elapsed(b, token, event)
    elif event.purpose == "approval_timeout":
        on_approval_timeout(b, token, event)
    elif event.purpose == "timeout":
        _timed_out(b, token, event)
    else:
        b.emit("decision.event.ignored", kind=event.kind, token_id=token.id, purpose=event.purpose,
               reason=f"unknown timer purpose {event.purpose!r}")


def _wait_elapsed(b: PlanBuilder, token: Token, event: ev.Timer) -> None:
    if token.status != WAITING or (token.wait or {}).get("kind") != "timer":
        b.emit("decision.event.ignored", kind=event.kind, token_id=token.id, reason="token does not wait for a timer")
        return
    node: WaitNode = b.definition.node(token.node_id)
    b.emit("decision.wait.resume", token=token, reason=f"timer of {node.duration_ms} ms fired")
    finish_token(b, token, output={"waited_ms": node.duration_ms}, key=node.output)
    advance(b, token, node.next)


def _timed_out(b: PlanBuilder, token: Token, event: ev.Timer) -> None:
    node = b.definition.node(token.node_id)
    if node.kind == "task":
        on_task_timeout(b, token, event)
        return
    b.emit("decision.node.timeout", token=token, timeout_ms=node.timeout_ms,
           reason=f"node {token.node_id!r} did not finish within timeout_ms={node.timeout_ms}")
    # Cancelling (not just failing) the token also cancels a child run it waits for.
    cancel_tokens(b, [token], reason="node timeout")
    on_failure = node.on_failure if isinstance(node, SubworkflowNode) else None
    if on_failure:
        enter(b, on_failure, scope=token.scope, fan_id=token.fan_id, branch_index=token.branch_index)
    else:
        fail_workflow(b, Problem("node.timeout", f"node {token.node_id!r} timed out after {node.timeout_ms} ms",
                                 details={"node": token.node_id}))


def on_signal(b: PlanBuilder, event: ev.Signal) -> None:
    """A named external event: every token waiting for it resumes with the signal's data as output."""
    waiting = [t for t in b.active() if t.status == WAITING and (t.wait or {}).get("kind") == "event"
               and t.wait.get("event") == event.name]
    if not waiting:
        b.emit("decision.event.ignored", kind=event.kind, signal=event.name,
               reason=f"no token waits for the signal {event.name!r}")
        return
    for token in waiting:
        if b.tokens[token.id].status != WAITING:
            continue  # an earlier resumed path ended the run or cancelled this one
        node: WaitNode = b.definition.node(token.node_id)
        b.emit("decision.wait.resume", token=token, signal=event.name, reason=f"signal {event.name!r} arrived")
        finish_token(b, token, output=event.data, key=node.output or token.node_id)
        advance(b, token, node.next)
