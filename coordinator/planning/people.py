"""People (seeds 002 and 004): an approval node puts its token — and so, often, the run — in ``waiting``,
writes an ``approvals`` row, publishes the request on ``cogo:approvals`` and resumes on a decision or
on its timeout (escalation to ``on_timeout``, or failure)."""

from __future__ import annotations

from bus.errors import Problem
from coordinator import decisions as d
from coordinator import events as ev
from coordinator.definitions import ApprovalNode
from coordinator.planning.builder import PlanBuilder
from coordinator.planning.transitions import enter, entry_rule, fail_workflow, finish_token
from coordinator.state import FAILED, WAITING, Token

APPROVALS_CHANNEL = "cogo:approvals"
"""The Redis channel approval requests are published on (the HITL gateway of seed 002 listens here)."""


@entry_rule("approval")
def _enter_approval(b: PlanBuilder, token: Token, node: ApprovalNode) -> None:
    approval_id = b.derived_id(token.id, "approval")
    expires_at = b.now + node.timeout_ms / 1000 if node.timeout_ms else None
    b.emit("decision.approval.request", token=token, approval_id=approval_id, prompt=node.prompt,
           expires_at=expires_at, on_timeout=node.on_timeout,
           reason="an approval node waits for a person; nothing goes on automatically")
    b.decide(d.MarkWaiting(token.id, {"kind": "approval", "approval_id": approval_id, "expires_at": expires_at}))
    b.decide(d.RequestApproval(approval_id, token.id, token.node_id, node.prompt, expires_at))
    b.decide(d.Notify(APPROVALS_CHANNEL, {
        "type": "approval.requested", "approval_id": approval_id, "run_id": b.run.id, "tenant": b.run.tenant,
        "workflow": b.definition.name, "node": token.node_id, "prompt": node.prompt,
        "requested_at": b.now, "expires_at": expires_at}))
    if expires_at is not None:
        b.decide(d.ScheduleAlarm(token.id, expires_at, "approval_timeout", b.derived_id(token.id, "approval-timeout")))


def _waiting_for(b: PlanBuilder, event: ev.Event, token_id: str, approval_id: str) -> Token | None:
    token = b.tokens.get(token_id)
    wait = (token.wait or {}) if token else {}
    if token is None or token.status != WAITING or wait.get("approval_id") != approval_id:
        b.emit("decision.event.ignored", kind=event.kind, token_id=token_id, approval_id=approval_id,
               reason="no token waits for this approval any more (decided, expired or cancelled)")
        return None
    return token


def on_approval(b: PlanBuilder, event: ev.ApprovalDecided) -> None:
    """A person decided: take the approve or reject route."""
    token = _waiting_for(b, event, event.token_id, event.approval_id)
    if token is None:
        return
    node: ApprovalNode = b.definition.node(token.node_id)
    to, other = (node.on_approve, node.on_reject) if event.approved else (node.on_reject, node.on_approve)
    b.emit("decision.approval.resolve", token=token, approval_id=event.approval_id, approved=event.approved,
           by=event.by, comment=event.comment, to=to, rejected=other,
           reason=f"{'approved' if event.approved else 'rejected'} by {event.by or 'someone'}")
    b.decide(d.ResolveApproval(event.approval_id, "approved" if event.approved else "rejected", event.by,
                               event.comment))
    finish_token(b, token, output={"approved": event.approved, "by": event.by, "comment": event.comment},
                 key=token.node_id)
    enter(b, to, scope=token.scope, fan_id=token.fan_id, branch_index=token.branch_index)


def on_approval_timeout(b: PlanBuilder, token: Token, event: ev.Timer) -> None:
    """Nobody decided in time: escalate to ``on_timeout`` or fail the run, as the node says."""
    node: ApprovalNode = b.definition.node(token.node_id)
    approval_id = (token.wait or {}).get("approval_id", "")
    if _waiting_for(b, event, token.id, approval_id) is None:
        return
    b.decide(d.ResolveApproval(approval_id, "expired", "cogo", f"no decision within {node.timeout_ms} ms"))
    if node.on_timeout == "fail":
        b.emit("decision.approval.timeout", token=token, approval_id=approval_id, action="fail",
               reason=f"no decision within {node.timeout_ms} ms and on_timeout is fail")
        error = Problem("approval.timeout", f"approval {token.node_id!r} was not decided within {node.timeout_ms} ms",
                        details={"node": token.node_id, "approval_id": approval_id})
        b.decide(d.UpdateTokenStatus(token.id, FAILED, error=error))
        fail_workflow(b, error)
        return
    b.emit("decision.approval.timeout", token=token, approval_id=approval_id, action="escalate",
           to=node.on_timeout, reason=f"no decision within {node.timeout_ms} ms: escalating")
    finish_token(b, token, output={"approved": None, "timed_out": True}, key=token.node_id)
    enter(b, node.on_timeout, scope=token.scope, fan_id=token.fan_id, branch_index=token.branch_index)
