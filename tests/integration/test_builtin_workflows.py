"""The built-in flows end to end in-process, with the real worker handlers (the deterministic local model)."""

from __future__ import annotations

from bus.settings import Settings
from coordinator.replay import replay_run
from tests.support.harness import Fleet, events, run_row, submit, types
from workers import build_test, codegen, kg_build, rag_embed


def real_fleet(engine, tmp_path) -> Fleet:
    handlers = {**codegen.HANDLERS, **build_test.HANDLERS, **rag_embed.HANDLERS, **kg_build.HANDLERS}
    settings = Settings(broker_url="memory://", artifacts_dir=tmp_path / "artifacts").checked()
    return Fleet(engine, handlers, settings=settings)


def test_indexing_embeds_and_builds_a_graph(sqlite_engine, tmp_path):
    fleet = real_fleet(sqlite_engine, tmp_path)
    run_id = submit(fleet, "index", {"documents": [{"id": "d1", "text": "Alice met Bob in Paris. Bob works at Acme."}]})
    fleet.drain()
    output = run_row(fleet, run_id)["output"]
    assert output["documents"] == 1 and output["nodes"] >= 2 and output["graph_path"].endswith("graph.json")


def test_demo_fans_out_joins_and_gates_with_the_real_workers(sqlite_engine, tmp_path):
    fleet = real_fleet(sqlite_engine, tmp_path)
    run_id = submit(fleet, "demo", {"specs": ["a function add(a, b) returning the sum of two numbers",
                                              "a function is_palindrome(s) telling whether a string reads the "
                                              "same backwards"]})
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "completed", run["error"]
    assert run["output"]["passed_gate"] is True and run["output"]["mean_success_rate"] == 1.0
    trace = types(fleet, run_id)
    assert trace.count("operation.context.branch_table.create") == 2
    assert trace.count("operation.context.branch_table.drop") == 2
    [gate] = events(fleet, run_id, "decision.gate.evaluate")
    assert gate["data"]["passed"] is True
    assert replay_run(sqlite_engine, run_id, registry=fleet.registry)["faithful"] is True


def test_embed_runs_the_real_rag_embed_worker_once(sqlite_engine, tmp_path):
    fleet = real_fleet(sqlite_engine, tmp_path)
    run_id = submit(fleet, "embed", {"documents": [{"id": "d1", "text": "one two three"}, {"id": "d2", "text": "x"}]})
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "completed", run["error"]
    assert run["workflow"] == "single-task"
    assert run["output"]["result"]["documents"] == 2 and run["output"]["result"]["chunks"] == 2


def test_echo_completes_with_its_payload_and_no_worker(sqlite_engine):
    fleet = Fleet(sqlite_engine, {})
    payload = {"text": "Cogo Runs Here", "n": [1, 2]}
    run_id = submit(fleet, "echo", payload)
    fleet.drain()
    run = run_row(fleet, run_id)
    assert (run["status"], run["output"]) == ("completed", payload)
    assert "decision.task.dispatch" not in types(fleet, run_id)
