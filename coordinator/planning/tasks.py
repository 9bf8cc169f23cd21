"""Task outcomes and timeouts: what a finished, failed or overdue assignment means for the run."""

from __future__ import annotations

from bus.errors import Problem
from coordinator import decisions as d
from coordinator import events as ev
from coordinator.definitions import TaskNode
from coordinator.planning.builder import PlanBuilder
from coordinator.planning.transitions import abandon_assignments, advance, enter, fail_workflow, finish_token
from coordinator.state import FAILED, TOKEN_ACTIVE, Token


def _live_task_token(b: PlanBuilder, event: ev.Event, token_id: str, assignment_id: str | None) -> Token | None:
    token = b.tokens.get(token_id)
    reason = None
    if token is None or token.status not in TOKEN_ACTIVE:
        reason = "token is not active (a duplicate, or it was cancelled)"
    elif assignment_id is not None and token.assignment_id not in (None, assignment_id):
        reason = "outcome of an assignment the token no longer waits for"
    if reason:
        b.emit("decision.event.ignored", kind=event.kind, token_id=token_id, reason=reason)
        return None
    return token


def on_task_completed(b: PlanBuilder, event: ev.TaskCompleted) -> None:
    """Store the output, then follow the node's transitions."""
    token = _live_task_token(b, event, event.token_id, event.assignment_id)
    if token is None:
        return
    node = b.definition.node(token.node_id)
    b.emit("decision.task.completed", token=token, attempts=event.attempts, usage=event.usage)
    finish_token(b, token, output=event.output, key=getattr(node, "output", None) or token.node_id)
    advance(b, token, node.next, output=event.output)


def on_task_failed(b: PlanBuilder, event: ev.TaskFailed) -> None:
    """Route to the node's ``on_failure``, or fail the run (its failure plan, all decisions up front)."""
    token = _live_task_token(b, event, event.token_id, event.assignment_id)
    if token is None:
        return
    node = b.definition.node(token.node_id)
    on_failure = node.on_failure if isinstance(node, TaskNode) else None
    b.emit("decision.task.failed", token=token, attempts=event.attempts, error=event.error.to_dict(),
           to=on_failure, reason="retries exhausted or not retryable")
    b.decide(d.UpdateTokenStatus(token.id, FAILED, error=event.error))
    if on_failure:
        enter(b, on_failure, scope=token.scope, fan_id=token.fan_id, branch_index=token.branch_index)
    else:
        fail_workflow(b, Problem(event.error.code, event.error.message or "task failed",
                                 details={**event.error.details, "node": token.node_id, "attempts": event.attempts}))


def on_task_timeout(b: PlanBuilder, token: Token, event: ev.Timer) -> None:
    """A task's timeout fired while it was still running: treat it as a final failure."""
    b.emit("decision.task.timeout", token=token, reason="node timeout_ms elapsed before an outcome")
    abandon_assignments(b, [token], reason="node timeout")
    on_task_failed(b, ev.TaskFailed(event.id, event.run_id, token_id=token.id, assignment_id=None,
                                    error=Problem("node.timeout", f"node {token.node_id!r} timed out")))
