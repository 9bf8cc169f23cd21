"""The built-in workflows (the user's three flows and the demo), planned purely with made-up outputs."""

from __future__ import annotations

from coordinator import decisions as d
from coordinator import events as ev
from coordinator.definitions import ForeachNode, GateNode, JoinNode, Registry
from coordinator.intents import INTENT_WORKFLOWS, resolve
from tests.unit.planning_sim import Sim, all_decisions, decisions

REGISTRY = Registry.builtin()


def test_every_intent_names_a_builtin_workflow():
    assert set(INTENT_WORKFLOWS) >= {"codegen", "index", "upgrade", "echo", "demo"}
    for intent in INTENT_WORKFLOWS:
        assert resolve(intent, REGISTRY).name == INTENT_WORKFLOWS[intent]


def test_demo_shows_a_fan_out_a_join_and_a_gate():
    kinds = {type(n) for n in REGISTRY.get("demo").nodes.values()}
    assert {ForeachNode, JoinNode, GateNode} <= kinds


def test_indexing_embeds_then_builds_the_graph_from_the_index():
    sim = Sim(REGISTRY.get("indexing"), {"documents": [{"id": "a", "text": "x"}]})
    [embed] = decisions(sim.start(), d.DispatchToken)
    assert (embed.service, embed.role, embed.input) == ("rag", "embed", {"documents": [{"id": "a", "text": "x"}]})
    [graph] = decisions(sim.complete("embed.1", {"index_path": "/i.jsonl", "chunks": 3, "documents": 1}),
                        d.DispatchToken)
    assert (graph.service, graph.role, graph.input) == ("kg", "build", {"index_path": "/i.jsonl"})
    sim.complete("graph.2", {"graph_path": "/g.json", "nodes": 2, "edges": 1})
    assert sim.status == "completed"
    assert sim.plans[-1].decisions[-1].output["graph_path"] == "/g.json"


def run_codegen(rates: list[float]) -> Sim:
    sim = Sim(REGISTRY.get("codegen-build-test"), {"spec": "add"})
    sim.start()
    for rate in rates:
        if sim.status != "running":
            break
        [gen] = sim.dispatched()
        sim.complete(gen, {"edits_path": "/e.json", "files": ["a.py"], "summary": "s"})
        [test] = sim.dispatched()
        sim.complete(test, {"report_path": "/r.json", "success_rate": rate, "passed": 1, "failed": 0,
                            "feedback": f"rate {rate}"})
    return sim


def test_codegen_feeds_build_test_back_and_promotes_once_the_gate_passes():
    sim = run_codegen([0.5, 1.0])
    assert sim.status == "completed"
    gens = [x for x in all_decisions(sim, d.DispatchToken) if x.service == "codegen"]
    assert [g.input["feedback"] for g in gens] == ["", "rate 0.5"]
    assert [x.channel for x in all_decisions(sim, d.Notify)] == ["cogo:promote"]
    assert sim.plans[-1].decisions[-1].output["success_rate"] == 1.0


def test_codegen_feedback_loop_is_bounded_at_three():
    sim = run_codegen([0.1] * 10)
    assert sim.status == "failed"
    assert len([x for x in all_decisions(sim, d.DispatchToken) if x.service == "codegen"]) == 4
    assert all_decisions(sim, d.FailWorkflow)[0].error["code"] == "loop.max_feedback_loops"


def test_upgrade_asks_a_person_and_promotes_on_approval():
    sim = Sim(REGISTRY.get("upgrade"), {"proposal": "bump"})
    sim.start()
    sim.complete("propose.1", {"edits_path": "/e.json"})
    p = sim.complete("evaluate.2", {"success_rate": 0.9})
    [request] = decisions(p, d.RequestApproval)
    assert sim.status == "waiting"
    sim.send(ev.ApprovalDecided, approval_id=request.approval_id, token_id=request.token_id, approved=True, by="ana")
    assert sim.plans[-1].decisions[-1].output["promoted"] is True


def test_upgrade_rolls_back_when_the_evaluation_fails_its_gate():
    sim = Sim(REGISTRY.get("upgrade"), {"proposal": "bump"})
    sim.start()
    sim.complete("propose.1", {"edits_path": "/e.json"})
    sim.complete("evaluate.2", {"success_rate": 0.2})
    assert sim.status == "completed" and sim.plans[-1].decisions[-1].output["promoted"] is False
    assert all_decisions(sim, d.Notify)[0].message["message"]["action"] == "rollback"


def test_demo_gates_on_the_mean_success_rate_of_its_branches():
    sim = Sim(REGISTRY.get("demo"), {"specs": ["a", "b"]})
    sim.start()
    while sim.dispatched():
        token = sim.state.tokens[sim.dispatched()[0]]
        if token.node_id == "generate":
            sim.complete(token.id, {"edits_path": f"/{token.id}", "files": ["x.py"], "summary": ""})
        else:
            sim.complete(token.id, {"success_rate": 0.5 if token.branch_index == 0 else 1.0})
    out = sim.plans[-1].decisions[-1].output
    assert out["passed_gate"] is False and out["mean_success_rate"] == 0.75
    assert [r["spec"] for r in out["results"]] == ["a", "b"]
