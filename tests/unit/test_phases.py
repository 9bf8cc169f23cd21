"""Seed 004's phase form: compiled to the graph (order, gates, skipped phases, the feedback bound, the agent-type
table's errors), then planned purely through a few events."""

from __future__ import annotations

import pytest
import yaml

from bus.errors import ContractError
from coordinator import decisions as d
from coordinator.definitions import GateNode, JoinNode, ParallelNode, Registry, TaskNode, parse_definition
from coordinator.phases import DONE, compile_phases
from tests.unit.planning_sim import Sim, all_decisions, all_types

BASE = """
name: phased
agent_types:
  coding: {route: codegen.generate, agent: {agent_id: coder}}
  review: {route: code.review}
  deploying: {route: deploy.run, retry: {maximum_attempts: 2}}
  monitor: {route: watch.check}
phases:
  - name: development
    tasks:
      - {name: generate, assigned_to: coding, input: {spec: input.spec}}
      - {name: review, assigned_to: review, input: {code: context.generate.code}}
  - devops
  - name: monitoring
    tasks: [{name: check, assigned_to: monitor, input: {code: "context.development[0].generate.code"}}]
gate: {required_success_rate: 0.5}
feedback: {from: monitoring, to: development, when: "context.monitoring[0].check.healthy == `false`",
           max_feedback_loops: 2}
output: {healthy: "context.monitoring[0].check.healthy"}
"""


def raw(**changes) -> dict:
    """The base phase-form definition with top-level keys replaced."""
    return {**yaml.safe_load(BASE), **changes}


def test_phases_compile_in_order_to_fan_outs_joins_and_gates():
    definition = parse_definition(raw())
    assert definition.start == "development" and definition.max_loops == 2
    dev = definition.node("development")
    assert isinstance(dev, ParallelNode) and dev.branches == ["development-generate"]
    generate, review = definition.node("development-generate"), definition.node("development-review")
    assert isinstance(generate, TaskNode) and (generate.route.service, generate.route.role) == ("codegen", "generate")
    assert generate.agent.agent_id == "coder" and review.agent.agent_id == "review"
    assert [t.to for t in generate.next] == ["development-review"] and generate.on_failure == "development-review"
    assert [t.to for t in review.next] == ["development--join"] and review.on_failure == "development--join"
    join = definition.node("development--join")
    assert isinstance(join, JoinNode) and join.output == "development"
    gate = definition.node("development--gate")
    assert isinstance(gate, GateNode) and gate.success_rate.threshold == 0.5
    assert (gate.on_pass, gate.on_fail) == ("devops", "development--gate-failed")
    assert definition.node("development--gate-failed").code == "phase.gate_failed"
    assert definition.node("monitoring--gate").on_pass == "monitoring--feedback"
    feedback = definition.node("monitoring--feedback")
    assert (feedback.on_pass, feedback.on_fail) == ("development", DONE)


def test_a_phase_without_tasks_is_a_gate_that_records_it_skipped():
    devops = parse_definition(raw()).node("devops")
    assert isinstance(devops, GateNode) and devops.on_pass == devops.on_fail == "monitoring"
    assert "skipped" in devops.description


def test_a_phase_gate_overrides_the_workflow_gate():
    phases = raw()["phases"]
    phases[0] = {**phases[0], "gate": {"required_success_rate": 1.0}}
    definition = parse_definition(raw(phases=phases))
    assert definition.node("development--gate").success_rate.threshold == 1.0
    assert definition.node("monitoring--gate").success_rate.threshold == 0.5


def test_flat_tasks_are_placed_by_the_phase_to_agent_type_table():
    definition = parse_definition(raw(phases=["development", "devops", "monitoring"], tasks=[
        {"name": "watch", "assigned_to": "monitor"}, {"name": "ship", "assigned_to": "deploying"},
        {"name": "write", "assigned_to": "coding"}]))
    assert definition.node("development").branches == ["development-write"]
    assert definition.node("devops").branches == ["devops-ship"]
    assert definition.node("devops-ship").retry.maximum_attempts == 2
    assert definition.node("monitoring").branches == ["monitoring-watch"]


@pytest.mark.parametrize("changes, code, words", [
    ({"phases": [{"name": "devops", "tasks": [{"name": "x", "assigned_to": "coding"}]}]},
     "phase.agent_type_not_allowed", "may not work in phase 'devops' (allowed: devops, deploying)"),
    ({"phases": [{"name": "development", "tasks": [{"name": "x", "assigned_to": "wizard"}]}]},
     "phase.agent_type_unknown", "agent type 'wizard' is not declared"),
    ({"phases": ["development"], "feedback": None, "tasks": [{"name": "x", "assigned_to": "monitor"}]},
     "phase.agent_type_unmapped", "belongs to no listed phase"),
    ({"phases": ["development", "review"], "feedback": None,
      "phase_agent_types": {"development": ["coding"], "review": ["coding"]},
      "tasks": [{"name": "x", "assigned_to": "coding"}]},
     "phase.agent_type_unmapped", "belongs to phases development, review"),
    ({"phases": ["qa"], "feedback": None}, "phase.invalid", "phase 'qa' has no row"),
    ({"phases": ["devops", "devops"], "feedback": None}, "phase.invalid", "listed twice"),
    ({"phases": [{"name": "development", "tasks": [{"name": "index", "assigned_to": "coding"}]}], "feedback": None},
     "phase.invalid", "task 'index' of phase 'development'"),
    ({"feedback": {"from": "development", "to": "monitoring", "when": "`true`"}}, "phase.invalid", "comes after it"),
    ({"feedback": {"from": "monitoring", "to": "qa", "when": "`true`"}}, "phase.invalid", "unknown phase 'qa'"),
    ({"gate": {"required_success_rate": 1.5}}, "definition.invalid", "gate.required_success_rate"),
    ({"nodes": {}}, "definition.invalid", "either 'phases' or 'nodes'"),
])
def test_a_phase_form_that_does_not_fit_fails_at_load_time_with_a_stable_code(changes, code, words):
    with pytest.raises(ContractError) as err:
        parse_definition(raw(**changes), source="phased.yaml")
    assert err.value.code == code and words in str(err.value), str(err.value)
    assert str(err.value).startswith("phased.yaml: ")


def test_a_bad_expression_in_the_feedback_fails_at_load_time_naming_the_field():
    with pytest.raises(ContractError) as err:
        parse_definition(raw(feedback={"from": "monitoring", "to": "development", "when": "context.[["}))
    assert err.value.code == "definition.invalid"
    assert str(err.value).startswith("definition: feedback.when: bad expression 'context.[['"), str(err.value)


def test_compiling_is_pure_data_the_graph_loader_validates():
    graph = compile_phases(raw())
    assert "phases" not in graph and graph["start"] == "development"
    assert parse_definition(graph) == parse_definition(raw())


# -- planned through events ---------------------------------------------------------------------------
def step(sim: Sim, outputs: dict[str, object]) -> None:
    """Finish the one dispatched task: complete it with ``outputs[node]``, or fail it when that is ``None``."""
    [token_id] = sim.dispatched()
    out = outputs[sim.state.tokens[token_id].node_id]
    if out is None:
        sim.fail(token_id)
    else:
        sim.complete(token_id, out)


def one_pass(sim: Sim, *, review: object = None, healthy: bool = True) -> None:
    """Development (generate succeeds; review as given), then monitoring."""
    outputs = {"development-generate": {"code": "x"}, "development-review": review,
               "monitoring-check": {"healthy": healthy}}
    for _ in range(3):
        if sim.status != "running" or not sim.dispatched():
            return
        step(sim, outputs)


def test_a_failed_task_is_recorded_and_the_phase_goes_on_when_the_gate_holds():
    sim = Sim(raw(), {"spec": "s"})
    sim.start()
    one_pass(sim, review=None)
    assert sim.status == "completed"
    assert sim.plans[-1].decisions[-1].output == {"healthy": True}
    failed = [p for p in sim.plans if "decision.task.failed" in [e.type for e in p.events]]
    assert len(failed) == 1
    [gate] = [dict(e.data) for p in sim.plans for e in p.events
              if e.type == "decision.gate.evaluate" and e.node_id == "development--gate"]
    assert (gate["value"], gate["threshold"], gate["passed"]) == (0.5, 0.5, True)
    reviewer = [x for x in all_decisions(sim, d.DispatchToken) if x.role == "review"]
    assert reviewer[0].input == {"code": "x"}  # a task sees the earlier tasks of its phase


def test_a_phase_under_its_gate_fails_the_run_with_the_rate_and_threshold():
    phases = raw()["phases"]
    phases[0] = {**phases[0], "gate": {"required_success_rate": 0.75}}
    sim = Sim(raw(phases=phases), {"spec": "s"})
    sim.start()
    one_pass(sim, review=None)
    assert sim.status == "failed"
    [failure] = all_decisions(sim, d.FailWorkflow)
    assert failure.error.code == "phase.gate_failed" and "phase 'development'" in failure.error.message
    assert failure.error.details["output"] == {"phase": "development", "success_rate": 0.5,
                                               "required_success_rate": 0.75,
                                               "succeeded": {"generate": True, "review": False}}
    assert not [x for x in all_decisions(sim, d.DispatchToken) if x.service == "watch"]


def test_the_skipped_phase_is_in_the_trace():
    sim = Sim(raw(), {"spec": "s"})
    sim.start()
    one_pass(sim, review={"ok": True})
    [devops] = [dict(e.data) for p in sim.plans for e in p.events
                if e.type == "decision.gate.evaluate" and e.node_id == "devops"]
    assert devops["value"] == "skipped" and devops["passed"] is True
    assert sim.state.context["devops"] == {"passed": True, "value": "skipped"}


def test_the_feedback_loop_goes_back_to_development_and_a_new_pass_starts_clean():
    sim = Sim(raw(), {"spec": "s"})
    sim.start()
    one_pass(sim, review={"ok": True}, healthy=False)
    assert sim.status == "running" and sim.state.context["development"][0]["review"] == {"ok": True}
    one_pass(sim, review=None, healthy=True)
    assert sim.status == "completed"
    assert "review" not in sim.state.context["development"][0]  # the second pass's review failed
    assert len([x for x in all_decisions(sim, d.DispatchToken) if x.service == "codegen"]) == 2


def test_the_feedback_loop_is_bounded_by_max_feedback_loops():
    sim = Sim(raw(), {"spec": "s"})
    sim.start()
    for _ in range(5):
        one_pass(sim, review={"ok": True}, healthy=False)
    assert sim.status == "failed"
    [failure] = all_decisions(sim, d.FailWorkflow)
    assert failure.error.code == "loop.max_feedback_loops" and failure.error.details["node"] == "development"
    assert len([x for x in all_decisions(sim, d.DispatchToken) if x.service == "codegen"]) == 3  # 1 + 2 loops
    assert "decision.workflow.fail" in all_types(sim)


def test_the_builtin_asdlc_example_is_a_phase_form_workflow_on_the_fleets_routes():
    definition = Registry.builtin().get("asdlc")
    routes = {(n.route.service, n.route.role) for n in definition.nodes.values() if isinstance(n, TaskNode)}
    assert routes == {("codegen", "generate"), ("code", "build-test")}
    assert isinstance(definition.node("devops"), GateNode) and definition.max_loops == 3
    sim = Sim(definition, {"spec": "add"})
    sim.start()
    outputs = {"development-generate": {"edits_path": "/e.json", "files": ["a.py"], "summary": "s"},
               "development-test": {"success_rate": 0.5, "feedback": "1 failed"},
               "monitoring-check": {"success_rate": 0.5, "feedback": "1 failed", "report_path": "/r.json"}}
    for _ in range(3):
        step(sim, outputs)
    generates = [x for x in all_decisions(sim, d.DispatchToken) if x.service == "codegen"]
    assert [g.input["feedback"] for g in generates] == ["", "1 failed"]
