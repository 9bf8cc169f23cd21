"""Pure planning of sub-workflows: the child run, its mappings, completion and failure propagation."""

from __future__ import annotations

from coordinator import decisions as d
from coordinator import events as ev
from tests.unit.planning_sim import Sim, decisions, events, types

PARENT = """
name: parent
start: child
nodes:
  child:
    kind: subworkflow
    workflow: kid
    input_mapping: {n: input.n, tag: "'x'"}
    output_mapping: {doubled: output.value, seen: input.n}
    next: done
  done: {kind: end, output: {doubled: context.doubled, seen: context.seen}}
"""


def started(wf: str = PARENT) -> tuple[Sim, d.StartSubworkflow]:
    sim = Sim(wf, {"n": 21}, catalog={"kid": (1, 2)})
    return sim, decisions(sim.start(), d.StartSubworkflow)[0]


def test_subworkflow_starts_the_newest_child_with_its_mapped_input():
    sim, start = started()
    assert (start.token_id, start.workflow, start.version, start.input) == ("child.1", "kid", 2, {"n": 21, "tag": "x"})
    assert start.child_run_id == Sim(PARENT, catalog={"kid": (2,)}).start().decisions[-1].child_run_id
    assert sim.status == "waiting" and sim.state.tokens["child.1"].child_run_id == start.child_run_id
    assert events(sim.plans[0], "decision.subworkflow.start")[0]["depth"] == 1


def test_child_completion_maps_its_output_and_goes_on():
    sim, start = started()
    p = sim.send(ev.ChildCompleted, token_id="child.1", child_run_id=start.child_run_id, output={"value": 42})
    assert [(x.key, x.value) for x in decisions(p, d.ApplyOutputMapping)] == [("doubled", 42), ("seen", 21)]
    assert sim.status == "completed" and p.decisions[-1].output == {"doubled": 42, "seen": 21}


def test_child_failure_is_the_parents_failure_plan_listed_up_front():
    sim, start = started()
    p = sim.send(ev.ChildFailed, token_id="child.1", child_run_id=start.child_run_id,
                 error={"code": "boom", "message": "child broke"})
    assert [type(x).__name__ for x in p.decisions] == ["UpdateTokenStatus", "FailWorkflow"]
    error = p.decisions[-1].error
    assert (error.code, error.details["child_run_id"], error.details["child_error"]["code"]) == (
        "subworkflow.failed", start.child_run_id, "boom")


def test_child_failure_can_route_to_on_failure():
    sim, start = started(PARENT.replace("    next: done", "    on_failure: done\n    next: done"))
    sim.send(ev.ChildFailed, token_id="child.1", child_run_id=start.child_run_id, error={"code": "boom"})
    assert sim.status == "completed"


def test_an_unknown_child_workflow_fails_the_run():
    sim = Sim(PARENT, catalog={"kid": ()})
    p = sim.start()
    assert decisions(p, d.FailWorkflow)[0].error.code == "subworkflow.unknown"


def test_nesting_is_bounded():
    sim = Sim(PARENT, catalog={"kid": (1,)}, parent_run_id="00000000-0000-4000-8000-0000000000ff", depth=32)
    p = sim.start()
    assert decisions(p, d.FailWorkflow)[0].error.code == "subworkflow.too_deep"


def test_every_event_of_a_child_run_names_its_parent():
    parent = "00000000-0000-4000-8000-0000000000ff"
    sim = Sim(PARENT, catalog={"kid": (1,)}, parent_run_id=parent, depth=1)
    p = sim.start()
    assert p.events and {e.parent_run_id for e in p.events} == {parent}


def test_cancel_cancels_the_token_that_waits_for_the_child():
    sim, start = started()
    p = sim.send(ev.Cancel, reason="stop")
    assert decisions(p, d.CancelActiveTokens)[0].token_ids == ("child.1",)
    assert types(sim.send(ev.ChildCompleted, token_id="child.1", child_run_id=start.child_run_id)) == [
        "decision.event.ignored"]
