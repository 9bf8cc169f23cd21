"""The built-in workflows (the user's three flows and the demo), planned purely with made-up outputs."""

from __future__ import annotations

import pytest

from bus.envelope import Intent
from bus.errors import InvalidRequest
from coordinator import decisions as d
from coordinator import events as ev
from coordinator.definitions import ForeachNode, GateNode, JoinNode, Registry
from coordinator.intents import INTENT_WORKFLOWS, admit, catalogue, resolve
from tests.unit.planning_sim import Sim, all_decisions, decisions

REGISTRY = Registry.builtin()
DOCS = {"documents": [{"id": "d1", "text": "Alice met Bob."}, {"id": "d2", "text": ""}]}
VALID = {
    "codegen": [{"spec": "a function add(a, b)"}],
    "index": [DOCS],
    "embed": [DOCS],
    "upgrade": [{"proposal": "bump the parser"}, {"spec": "bump the parser"}, {"proposal": "a", "spec": "b"}],
    "demo": [{}, {"specs": ["a function add(a, b)"]}, {"specs": ["s"] * 50}],
    "echo": [{}, {"anything": [1, {"goes": None}]}],
}
"""Payloads every built-in intent accepts."""
INVALID = {
    "codegen": [({}, "spec: field required"), ({"spec": ""}, "spec: must have at least 1 character"),
                ({"spec": "  \n"}, "spec: must match the pattern"),
                ({"spec": 5}, "spec: must be a string, got integer"),
                ({"spec": "x" * 20_001}, "spec: must have at most 20000 characters"),
                ({"spec": "add", "files": {}}, "files: unknown field (known: spec)")],
    "index": [({}, "documents: field required"), ({"documents": []}, "documents: must have at least 1 item"),
              ({"documents": [{"id": "d1"}]}, "documents[0].text: field required"),
              ({"documents": [{"id": "d1", "text": "x"}, {"text": "y"}]}, "documents[1].id: field required"),
              ({"documents": [{"id": 1, "text": "x"}]}, "documents[0].id: must be a string, got integer"),
              ({"documents": {"id": "d1"}}, "documents: must be an array, got object"),
              ({"path": "/srv/docs"}, "documents: field required")],
    "embed": [({}, "documents: field required"), ({"documents": [{"text": "x"}]}, "documents[0].id: field required")],
    "upgrade": [({}, "payload: field required: proposal or spec"), ({"proposal": ""}, "proposal: must have at least"),
                ({"proposal": ["a"]}, "proposal: must be a string, got array")],
    "demo": [({"specs": []}, "specs: must have at least 1 item"), ({"specs": "add"}, "specs: must be an array"),
             ({"specs": ["ok", 3]}, "specs[1]: must be a string, got integer"),
             ({"specs": ["s"] * 51}, "specs: must have at most 50 items"),
             ({"spec": "add"}, "spec: unknown field (known: specs)")],
}
"""Payloads every built-in intent refuses at ingress, with the start of the message (the path first)."""


def test_every_intent_names_a_builtin_workflow():
    assert set(INTENT_WORKFLOWS) == {"codegen", "index", "upgrade", "embed", "echo", "demo"}
    for intent in INTENT_WORKFLOWS:
        assert resolve(intent, REGISTRY).name == INTENT_WORKFLOWS[intent]
    assert INTENT_WORKFLOWS["embed"] == "single-task" and INTENT_WORKFLOWS["echo"] == "echo"


def test_every_builtin_workflow_declares_its_input_and_a_description():
    for name in REGISTRY.names():
        definition = REGISTRY.get(name)
        assert definition.input is not None and definition.description, name


@pytest.mark.parametrize("intent", sorted(VALID))
def test_ingress_accepts_every_valid_payload_of_a_builtin_intent(intent):
    for payload in VALID[intent]:
        assert admit(Intent(tenant="t", intent=intent, payload=payload), REGISTRY).name == INTENT_WORKFLOWS[intent]


@pytest.mark.parametrize("intent, payload, message", [(i, p, m) for i, cases in sorted(INVALID.items())
                                                       for p, m in cases])
def test_ingress_refuses_a_bad_payload_naming_its_path(intent, payload, message):
    with pytest.raises(InvalidRequest) as err:
        admit(Intent(tenant="t", intent=intent, payload=payload), REGISTRY)
    assert err.value.code == "payload.invalid"
    assert str(err.value).startswith(message), str(err.value)
    assert err.value.details["intent"] == intent


def test_the_catalogue_lists_builtin_intents_then_workflows_once_each():
    listed = [(i.name, i.workflow) for i in catalogue(REGISTRY)]
    assert listed == [("codegen", "codegen-build-test"), ("index", "indexing"), ("upgrade", "upgrade"),
                      ("demo", "demo"), ("embed", "single-task"), ("echo", "echo"),
                      ("asdlc", "asdlc"),
                      ("codegen-build-test", "codegen-build-test"), ("indexing", "indexing"),
                      ("single-task", "single-task")]
    [index] = [i for i in catalogue(REGISTRY) if i.name == "index"]
    assert index.input_schema["required"] == ["documents"] and index.description.startswith("Embed documents")


def test_echo_completes_at_once_with_its_payload_as_the_output():
    payload = {"hello": ["world", {"n": 1}]}
    sim = Sim(REGISTRY.get("echo"), payload)
    planned = sim.start()
    assert sim.status == "completed"
    assert decisions(planned, d.DispatchToken) == []
    assert decisions(planned, d.CompleteWorkflow)[0].output == payload


def test_embed_runs_one_rag_embed_task_over_the_documents():
    sim = Sim(REGISTRY.get("single-task"), DOCS)
    [task] = decisions(sim.start(), d.DispatchToken)
    assert (task.service, task.role, task.input) == ("rag", "embed", DOCS)


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
    assert all_decisions(sim, d.FailWorkflow)[0].error.code == "loop.max_feedback_loops"


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
