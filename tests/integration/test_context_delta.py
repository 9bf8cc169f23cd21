"""The run's context is written as a delta: a step sends and sets only the keys it wrote (each replaced whole, never
merged into), so a step that writes one small key into a large context does not rewrite it all."""

from __future__ import annotations

import json

from sqlalchemy import event

from coordinator.store import run_view
from tests.support.harness import Fleet, registry_of, submit
from workers.handler import WorkResult

BIG = "x" * 50_000
OUTPUTS = {
    "big": {"blob": BIG},
    "first": {"a": {"x": 1}, "keep": [1, 2]},
    "second": {"a": {"y": None}, "note": 'quote " and unicode é'},
}


def _task(step: str, nxt: str, output: str) -> dict:
    return {"kind": "task", "route": {"service": "t", "role": "work"}, "agent": {"agent_id": "w"},
            "input": {"step": f"'{step}'"}, "output": output, "next": nxt}


FLOW = {"name": "ctx-delta", "start": "big", "nodes": {
    "big": _task("big", "first", "large"),
    "first": _task("first", "second", "r"),
    "second": _task("second", "done", 'odd"key'),
    "done": {"kind": "end"}}}


def test_a_step_writes_only_the_keys_it_changed_each_replaced_whole(engine):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output=OUTPUTS[p["step"]])},
                  registry=registry_of(FLOW))
    sent: list[tuple[str, object]] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cur, sql, params, *_: sent.append((sql, params)))
    run_id = submit(fleet, "ctx-delta")
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
    assert run["status"] == "completed", run["error"]
    assert run["context"] == {"large": OUTPUTS["big"], "r": OUTPUTS["first"], 'odd"key': OUTPUTS["second"]}
    run_updates = [json.dumps(params, default=lambda o: getattr(o, "obj", str(o)))  # psycopg's Json wraps .obj
                   for sql, params in sent if sql.lstrip().upper().startswith("UPDATE RUNS")]
    writing_r = next(p for p in run_updates if "keep" in p)  # the first to carry "r": the step that wrote it
    assert BIG not in writing_r  # it did not send "large" again
    assert any(BIG in p for p in run_updates)  # (the step that wrote "large" did)


def test_a_key_written_again_replaces_its_value_not_merges_into_it(engine):
    flow = {**FLOW, "name": "ctx-replace", "nodes": {**FLOW["nodes"], "second": _task("second", "done", "r")}}
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output=OUTPUTS[p["step"]])},
                  registry=registry_of(flow))
    run_id = submit(fleet, "ctx-replace")
    fleet.drain()
    with engine.connect() as conn:
        context = run_view(conn, run_id)["context"]
    assert context["r"] == OUTPUTS["second"]  # {"a": {"y": None}}, not {"a": {"x": 1, "y": None}, "keep": …}
