"""Pure planning of routing: transitions, gates, notify, task outcomes and bounded loops (no I/O)."""

from __future__ import annotations

from coordinator import decisions as d
from coordinator import events as ev
from tests.unit.planning_sim import Sim, all_decisions, all_types, decisions, events, types

TASK = "{kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: %s, next: %s}"

THREE_WAY = f"""
name: three-way
start: classify
nodes:
  classify:
    kind: task
    route: {{service: t, role: work}}
    agent: {{agent_id: w}}
    output: c
    next:
      - {{to: small, when: "output.size < `10`"}}
      - {{to: medium, when: "output.size < `100`"}}
      - {{to: large}}
  small: {TASK % ('s', 'done')}
  medium: {TASK % ('m', 'done')}
  large: {TASK % ('l', 'done')}
  done: {{kind: end, output: {{path: "[context.s, context.m, context.l]"}}}}
"""


def test_three_transitions_each_evaluated_and_the_right_path_taken():
    sim = Sim(THREE_WAY)
    sim.start()
    p = sim.complete("classify.1", {"size": 500})
    assert types(p, "decision.routing") == ["decision.routing.evaluate_transition"] * 3 + [
        "decision.routing.transition_matched"]
    evaluated = events(p, "decision.routing.evaluate_transition")
    assert [(e["to"], e["matched"]) for e in evaluated] == [("small", False), ("medium", False), ("large", True)]
    assert evaluated[0]["condition"] == "output.size < `10`" and evaluated[0]["value"] is False
    assert events(p, "decision.routing.transition_matched") == [
        {"to": "large", "spawn_count": 1, "rejected": []}]
    assert sim.active() == ["large.2"]


def test_the_first_matching_transition_wins_and_names_the_ones_it_rejected():
    sim = Sim(THREE_WAY)
    sim.start()
    p = sim.complete("classify.1", {"size": 5})
    assert [e["matched"] for e in events(p, "decision.routing.evaluate_transition")] == [True]
    assert events(p, "decision.routing.transition_matched")[0]["rejected"] == ["medium", "large"]
    sim.complete("small.2", {"ok": 1})
    assert sim.status == "completed"
    assert sim.plans[-1].decisions[-1] == d.CompleteWorkflow({"path": [{"ok": 1}, None, None]})


def test_no_matching_transition_fails_the_run_with_its_reason():
    sim = Sim("""
name: nomatch
start: a
nodes:
  a: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, next: [{to: b, when: "`false`"}]}
  b: {kind: end}
""")
    sim.start()
    p = sim.complete("a.1", {})
    assert sim.status == "failed"
    assert decisions(p, d.FailWorkflow)[0].error.code == "routing.no_match"


def test_start_dispatches_the_first_task_with_its_assignment():
    sim = Sim(THREE_WAY, {"x": 1})
    p = sim.start()
    assert types(p) == ["decision.routing.start", "decision.task.dispatch"]
    [dispatch] = decisions(p, d.DispatchToken)
    assert (dispatch.service, dispatch.role, dispatch.node_id, dispatch.max_attempts) == ("t", "work", "classify", 1)
    assert dispatch.assignment["agent_id"] == "w"
    assert sim.status == "running"


def test_planning_is_pure_the_same_state_and_event_give_the_same_plan():
    a, b = Sim(THREE_WAY), Sim(THREE_WAY)
    assert a.start() == b.start()
    assert a.complete("classify.1", {"size": 50}) == b.complete("classify.1", {"size": 50})


def test_events_after_the_end_and_before_the_start_are_ignored():
    sim = Sim(THREE_WAY)
    p = sim.send(ev.Signal, name="early")
    assert types(p) == ["decision.event.ignored"] and sim.status == "pending"
    sim.start()
    sim.send(ev.Cancel, reason="stop")
    assert sim.status == "cancelled"
    p = sim.complete("classify.1", {"size": 1})  # ignored, but what it spent is still settled
    assert types(p) == ["decision.assignment.settle", "decision.event.ignored"]
    assert [type(x).__name__ for x in p.decisions] == ["SettleAssignment"]


def test_a_duplicate_outcome_is_ignored():
    sim = Sim(THREE_WAY)
    sim.start()
    sim.complete("classify.1", {"size": 1})
    p = sim.complete("classify.1", {"size": 1})  # settling again is a no-op in the ledger (settled once)
    assert types(p) == ["decision.assignment.settle", "decision.event.ignored"]
    assert [type(x).__name__ for x in p.decisions] == ["SettleAssignment"]


GATED = """
name: gated
start: work
max_loops: 3
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: test, next: gate}
  gate:
    kind: gate
    success_rate: {value: context.test.rate, threshold: 0.8}
    pass: tell
    fail: work
  tell: {kind: notify, channel: "cogo:test", message: {rate: context.test.rate}, next: done}
  done: {kind: end}
"""


def test_gate_passes_on_the_success_rate_and_notify_publishes():
    sim = Sim(GATED)
    sim.start()
    p = sim.complete("work.1", {"rate": 0.9})
    [gate] = events(p, "decision.gate.evaluate")
    assert gate == {"passed": True, "to": "tell", "rejected": "work", "success_rate": "context.test.rate",
                    "value": 0.9, "threshold": 0.8}
    assert decisions(p, d.Notify)[0].channel == "cogo:test"
    assert decisions(p, d.Notify)[0].message["message"] == {"rate": 0.9}
    assert sim.status == "completed"


def test_feedback_loop_is_bounded_by_max_loops():
    sim = Sim(GATED)
    sim.start()
    for _ in range(10):
        if not sim.dispatched():
            break
        sim.complete(sim.dispatched()[0], {"rate": 0.1})
    assert sim.status == "failed"
    assert len(all_decisions(sim, d.DispatchToken)) == 4  # the first try and 3 feedback loops
    fail = all_decisions(sim, d.FailWorkflow)[0]
    assert fail.error.code == "loop.max_feedback_loops" and fail.error.details["node"] == "work"
    assert all_types(sim, "decision.gate").count("decision.gate.evaluate") == 4


def test_a_gate_passes_at_exactly_its_threshold_and_fails_just_below():
    at = Sim(GATED)
    at.start()
    [gate] = events(at.complete("work.1", {"rate": 0.8}), "decision.gate.evaluate")
    assert (gate["passed"], gate["to"]) == (True, "tell")
    below = Sim(GATED)
    below.start()
    [gate] = events(below.complete("work.1", {"rate": 0.7999}), "decision.gate.evaluate")
    assert (gate["passed"], gate["to"]) == (False, "work")


def test_a_loop_is_bounded_to_three_by_default():
    sim = Sim(GATED.replace("max_loops: 3\n", ""))
    sim.start()
    while sim.dispatched():
        sim.complete(sim.dispatched()[0], {"rate": 0.1})
    assert len(all_decisions(sim, d.DispatchToken)) == 1 + 3
    assert all_decisions(sim, d.FailWorkflow)[0].error.code == "loop.max_feedback_loops"


def test_loops_pass_once_the_gate_holds():
    sim = Sim(GATED)
    sim.start()
    sim.complete("work.1", {"rate": 0.5})
    sim.complete(sim.dispatched()[0], {"rate": 0.85})
    assert sim.status == "completed"
    iterations = [x.token.iteration for x in all_decisions(sim, d.CreateToken) if x.token.node_id == "work"]
    assert iterations == [0, 1]


def test_task_failure_routes_to_on_failure_or_fails_the_run_up_front():
    wf = """
name: fallible
start: a
nodes:
  a: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, on_failure: rescue, next: done}
  rescue: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, next: done}
  done: {kind: end}
"""
    sim = Sim(wf)
    sim.start()
    p = sim.fail("a.1")
    assert events(p, "decision.task.failed")[0]["to"] == "rescue"
    assert sim.active() == ["rescue.2"]
    p = sim.fail("rescue.2", code="boom")
    assert [type(x).__name__ for x in p.decisions] == ["SettleAssignment", "UpdateTokenStatus", "FailWorkflow"]
    assert sim.status == "failed" and p.decisions[-1].error.code == "boom"


def test_task_timeout_schedules_an_alarm_and_fails_the_token_when_it_fires():
    sim = Sim("""
name: slow
start: a
nodes:
  a: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, timeout_ms: 5000, on_failure: late}
  late: {kind: end, output: {late: "`true`"}}
""")
    p = sim.start()
    [alarm] = decisions(p, d.ScheduleAlarm)
    assert (alarm.purpose, alarm.fire_at) == ("timeout", sim.now + 5)
    p = sim.timer("a.1", "timeout")
    assert types(p, "decision.task") == ["decision.task.timeout", "decision.task.failed"]
    assert sim.status == "completed" and p.decisions[-1] == d.CompleteWorkflow({"late": True})
    assert types(sim.timer("a.1", "timeout")) == ["decision.event.ignored"]
