"""Pure planning of wait nodes, signals and node timeouts."""

from __future__ import annotations

from coordinator import decisions as d
from coordinator import events as ev
from tests.unit.planning_sim import Sim, decisions, events, types

WAITS = """
name: waits
start: pause
nodes:
  pause: {kind: wait, duration_ms: 30000, next: hear}
  hear: {kind: wait, event: go, output: go, timeout_ms: 10000, next: done}
  done: {kind: end, output: {go: context.go}}
"""


def test_a_timer_wait_schedules_a_durable_alarm_and_resumes_when_it_fires():
    sim = Sim(WAITS)
    p = sim.start()
    [alarm] = decisions(p, d.ScheduleAlarm)
    assert (alarm.token_id, alarm.purpose, alarm.fire_at) == ("pause.1", "wait", sim.now + 30)
    assert events(p, "decision.wait.timer")[0]["fire_at"] == sim.now + 30
    assert sim.status == "waiting"
    p = sim.timer("pause.1", "wait")
    assert types(p, "decision.wait") == ["decision.wait.resume", "decision.wait.event"]
    assert sim.state.tokens["hear.2"].wait == {"kind": "event", "event": "go"}


def test_a_signal_resumes_the_event_wait_with_its_data():
    sim = Sim(WAITS)
    sim.start()
    sim.timer("pause.1", "wait")
    assert types(sim.send(ev.Signal, name="other")) == ["decision.event.ignored"]
    p = sim.send(ev.Signal, name="go", data={"by": "ops"})
    assert sim.status == "completed" and p.decisions[-1].output == {"go": {"by": "ops"}}


def test_an_event_wait_times_out():
    sim = Sim(WAITS)
    sim.start()
    sim.timer("pause.1", "wait")
    p = sim.timer("hear.2", "timeout")
    assert types(p, "decision.node") == ["decision.node.timeout"]
    assert sim.status == "failed" and decisions(p, d.FailWorkflow)[0].error.code == "node.timeout"


def test_a_late_timer_is_ignored():
    sim = Sim(WAITS)
    sim.start()
    sim.timer("pause.1", "wait")
    assert types(sim.timer("pause.1", "wait")) == ["decision.event.ignored"]


SLOW_TASK = """
name: slow
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, timeout_ms: 5000, next: done}
  done: {kind: end}
"""


def test_a_task_that_times_out_abandons_its_assignment_in_the_plan():
    sim = Sim(SLOW_TASK)
    sim.start()
    assignment = sim.state.tokens["work.1"].assignment_id
    p = sim.timer("work.1", "timeout")
    assert decisions(p, d.AbandonAssignments) == [d.AbandonAssignments((assignment,), "node timeout")]
    assert events(p, "decision.assignment.abandon") == [{"assignment_ids": [assignment], "reason": "node timeout"}]
    assert sim.status == "failed" and decisions(p, d.FailWorkflow)[0].error.code == "node.timeout"


def test_an_outcome_is_settled_in_the_plan_whatever_it_means_for_the_run():
    sim = Sim(SLOW_TASK)
    sim.start()
    assignment = sim.state.tokens["work.1"].assignment_id
    p = sim.complete("work.1", {"ok": True})
    assert p.decisions[0] == d.SettleAssignment(assignment) and sim.status == "completed"
    late = sim.send(ev.TaskCompleted, token_id="work.1", output={"ok": True}, assignment_id=assignment, attempts=2)
    # the run has ended: the redelivered outcome is ignored, and settled all the same (a no-op in the ledger)
    assert late.decisions == [d.SettleAssignment(assignment)]
