"""Replay from the ledger: the fidelity check finds a recorded trace the planner no longer makes; a changed
definition shows where its decisions would differ; and the next state each plan computed is what phase 1
wrote and ``load_state`` reads back. (That the planner still makes the decisions it made when a history was
recorded is the golden histories' job: ``tests/unit/test_replay_golden.py``.)"""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import select, update

from bus.schema import introspection_events as ie
from coordinator.definitions import parse_definition
from coordinator.replay import initial_state, recorded_events, replay, replay_events, replay_run
from coordinator.schema import runs
from coordinator.store import load_state
from tests.support.harness import Fleet, registry_of, run_row, submit
from workers.handler import WorkResult

GATED = """
name: gated
start: split
nodes:
  split: {kind: foreach, items: input.items, body: work, join: merge}
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {x: item}, output: out,
         next: merge}
  merge: {kind: join, mode: all, output: results, next: gate}
  gate:
    kind: gate
    success_rate: {value: "avg(context.results[].out.rate)", threshold: 0.8}
    pass: ship
    fail: hold
  ship: {kind: end, output: {shipped: "`true`"}}
  hold: {kind: end, output: {shipped: "`false`"}}
"""


def rated(ctx, payload):
    return WorkResult(output={"rate": payload["x"] / 10})


def finished_run(engine) -> tuple[Fleet, str]:
    fleet = Fleet(engine, {("t", "work"): rated}, registry=registry_of(GATED))
    run_id = submit(fleet, "gated", {"items": [6, 7, 8]})
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"shipped": False}
    return fleet, run_id


def test_replay_reproduces_the_recorded_trace_and_finds_one_that_was_changed(engine):
    fleet, run_id = finished_run(engine)
    report = replay_run(engine, run_id, registry=fleet.registry)
    assert (report["faithful"], report["events"], report["differences"]) == (True, 4, [])
    assert "reproduced" in report["summary"]
    # A trace the planner would not make today (here: the gate recorded as passed) is found, at its event.
    with engine.begin() as conn:
        gate = conn.execute(select(ie.c.id, ie.c.data).where(ie.c.run_id == run_id,
                                                             ie.c.type == "decision.gate.evaluate")).one()
        conn.execute(update(ie).where(ie.c.id == gate.id).values(data={**gate.data, "passed": not gate.data["passed"]}))
    report = replay_run(engine, run_id, registry=fleet.registry)
    assert report["faithful"] is False
    assert report["first_mismatch"]["event_index"] == 3
    assert report["first_mismatch"]["recorded"][0] == "decision.gate.evaluate"


def test_the_recorded_trace_is_read_whole_however_many_pages_it_takes(engine):
    from bus.introspection import read
    from coordinator.replay import every_event

    fleet, run_id = finished_run(engine)
    with engine.connect() as conn:
        whole = [e for e in read(conn, run_id) if e["category"] in ("decision", "operation")]
        assert len(whole) > 3 * 7
        assert every_event(conn, run_id, ("decision", "operation"), page=7) == whole


def test_a_changed_definition_shows_where_the_decisions_differ(engine, tmp_path):
    fleet, run_id = finished_run(engine)
    changed = yaml.safe_load(GATED)
    changed["version"] = 2
    changed["nodes"]["gate"]["success_rate"]["threshold"] = 0.5
    path: Path = tmp_path / "gated-v2.yaml"
    path.write_text(yaml.safe_dump(changed))

    report = replay_run(engine, run_id, path, registry=fleet.registry)
    assert report["faithful"] is True
    [diff] = report["differences"]
    assert diff["index"] == 3 and diff["event"]["kind"] == "task_completed"
    recorded_end = [x for x in diff["recorded"] if x["type"] == "COMPLETE_WORKFLOW"]
    replayed_end = [x for x in diff["replayed"] if x["type"] == "COMPLETE_WORKFLOW"]
    assert recorded_end[0]["output"] == {"shipped": False} and replayed_end[0]["output"] == {"shipped": True}
    assert "decides differently at 1 event(s), first at event 3" in report["summary"]

    with engine.connect() as conn:
        assert replay(conn, run_id, registry=fleet.registry, definition=parse_definition(changed)) == \
            report["differences"]
        assert replay(conn, run_id, registry=fleet.registry) == []


def test_the_planned_next_state_is_what_phase_one_wrote_at_every_step(engine):
    fleet = Fleet(engine, {("t", "work"): rated}, registry=registry_of(GATED))
    run_id = submit(fleet, "gated", {"items": [1, 2, 3, 4]})
    compared = 0
    while (nxt := fleet.publisher.pop()) is not None:
        due, delivery = nxt
        fleet.clock.now = max(fleet.clock.now, due)
        if fleet.deliver(delivery) != "applied":
            continue
        with engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one()
            definition = fleet.registry.get("gated")
            steps = replay_events(initial_state(row, definition, {}), recorded_events(conn, run_id))
            planned = steps[-1].plan.next_state
            loaded = load_state(conn, run_id, fleet.registry)
        assert planned.run.status == loaded.run.status
        assert planned.run.version == loaded.run.version
        assert dict(planned.tokens) == dict(loaded.tokens)
        assert dict(planned.context) == dict(loaded.context)
        assert dict(planned.visits) == dict(loaded.visits)
        assert dict(planned.fan_ins) == dict(loaded.fan_ins)
        assert {k: dict(v) for k, v in planned.scopes.items()} == {k: dict(v) for k, v in loaded.scopes.items()}
        assert planned.token_seq == loaded.token_seq
        assert (row["active_tokens"], row["waiting_tokens"]) == \
            (len(planned.tokens), sum(t.status == "waiting" for t in planned.tokens.values()))
        compared += 1
    assert compared == 5  # the start and four outcomes
