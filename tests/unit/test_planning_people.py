"""Pure planning of approvals (seeds 002, 004): waiting, the request, approve / reject / timeout / cancel."""

from __future__ import annotations

from coordinator import decisions as d
from coordinator import events as ev
from coordinator.planning.people import APPROVALS_CHANNEL
from tests.unit.planning_sim import Sim, decisions, events, types

APPROVAL = """
name: gatekeeper
start: ask
nodes:
  ask:
    kind: approval
    prompt: Ship it?
    timeout_ms: 60000
    approve: ship
    reject: drop
    on_timeout: %s
  escalate: {kind: end, output: {outcome: "'escalated'"}}
  ship: {kind: end, output: {outcome: "'shipped'", by: context.ask.by}}
  drop: {kind: end, output: {outcome: "'dropped'"}}
"""


def started(on_timeout: str = "escalate") -> tuple[Sim, str]:
    sim = Sim(APPROVAL % on_timeout)
    p = sim.start()
    return sim, decisions(p, d.RequestApproval)[0].approval_id


def test_approval_waits_writes_the_request_publishes_it_and_arms_its_timeout():
    sim = Sim(APPROVAL % "escalate")
    p = sim.start()
    assert types(p) == ["decision.routing.start", "decision.approval.request"]
    [request] = decisions(p, d.RequestApproval)
    assert (request.token_id, request.node_id, request.prompt, request.expires_at) == (
        "ask.1", "ask", "Ship it?", sim.now + 60)
    [notify] = decisions(p, d.Notify)
    assert notify.channel == APPROVALS_CHANNEL == "cogo:approvals"
    assert notify.message["approval_id"] == request.approval_id and notify.message["tenant"] == "acme"
    assert decisions(p, d.ScheduleAlarm)[0].purpose == "approval_timeout"
    assert sim.status == "waiting"
    assert sim.state.tokens["ask.1"].wait["approval_id"] == request.approval_id


def test_approve_takes_the_approve_route():
    sim, approval_id = started()
    p = sim.send(ev.ApprovalDecided, approval_id=approval_id, token_id="ask.1", approved=True, by="ana")
    [resolve] = events(p, "decision.approval.resolve")
    assert (resolve["approved"], resolve["to"], resolve["rejected"], resolve["by"]) == (True, "ship", "drop", "ana")
    assert decisions(p, d.ResolveApproval) == [d.ResolveApproval(approval_id, "approved", "ana", "")]
    assert sim.status == "completed" and p.decisions[-1].output == {"outcome": "shipped", "by": "ana"}


def test_reject_takes_the_reject_route_and_a_second_decision_is_ignored():
    sim, approval_id = started()
    sim.send(ev.ApprovalDecided, approval_id=approval_id, token_id="ask.1", approved=False, by="bo", comment="no")
    assert sim.plans[-1].decisions[-1].output == {"outcome": "dropped"}
    p = sim.send(ev.ApprovalDecided, approval_id=approval_id, token_id="ask.1", approved=True, by="ana")
    assert types(p) == ["decision.event.ignored"]


def test_timeout_escalates_to_on_timeout():
    sim, approval_id = started("escalate")
    p = sim.timer("ask.1", "approval_timeout")
    assert events(p, "decision.approval.timeout")[0]["action"] == "escalate"
    assert decisions(p, d.ResolveApproval)[0].status == "expired"
    assert p.decisions[-1].output == {"outcome": "escalated"}


def test_timeout_fails_the_run_when_the_definition_says_fail():
    sim, approval_id = started("fail")
    p = sim.timer("ask.1", "approval_timeout")
    assert sim.status == "failed" and decisions(p, d.FailWorkflow)[0].error.code == "approval.timeout"
    assert decisions(p, d.ResolveApproval)[0].status == "expired"


def test_a_decision_after_the_timeout_is_ignored():
    sim, approval_id = started()
    sim.timer("ask.1", "approval_timeout")
    p = sim.send(ev.ApprovalDecided, approval_id=approval_id, token_id="ask.1", approved=True, by="late")
    assert types(p) == ["decision.event.ignored"]


def test_cancelling_the_run_cancels_its_pending_approval():
    sim, approval_id = started()
    p = sim.send(ev.Cancel, reason="stop")
    assert decisions(p, d.ResolveApproval) == [d.ResolveApproval(approval_id, "cancelled", "cogo", "stop")]
    assert sim.status == "cancelled"
