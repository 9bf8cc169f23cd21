"""The broker's worst days: every delivery twice, deliveries reordered, completions racing for a join.
A join fires exactly once and the run ends the same way as on a good day."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from bus.schema import agent_messages
from coordinator import brain as brain_module
from coordinator.store import load_state
from tests.support.harness import Fleet, drain_chaotically, registry_of, run_row, submit, types
from tests.support.invariants import assert_ledger_held
from workers.handler import WorkResult

FLOW = """
name: mixed
start: split
nodes:
  split: {kind: foreach, items: input.items, body: work, join: merge}
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {x: item}, output: out,
         next: check}
  check: {kind: gate, assert: "context.out.y > `0`", pass: merge, fail: merge}
  merge: {kind: join, mode: all, output: results, next: child}
  child: {kind: subworkflow, workflow: leaf, input_mapping: {n: "length(context.results)"}, next: done}
  done: {kind: end, output: {ys: "context.results[].out.y", child: context.child}}
"""

LEAF = """
name: leaf
start: pause
nodes:
  pause: {kind: wait, duration_ms: 10, next: work}
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {x: input.n}, output: out,
         next: done}
  done: {kind: end, output: {y: context.out.y}}
"""


def fleet_of(engine) -> Fleet:
    return Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"y": p["x"] * 10})}, fail_fast=True,
                 registry=registry_of(FLOW, LEAF))


EXPECTED = {"ys": [10, 20, 30, 40], "child": {"y": 40}}


def test_every_delivery_twice(engine):
    fleet = fleet_of(engine)
    run_id = submit(fleet, "mixed", {"items": [1, 2, 3, 4]})
    while (nxt := fleet.publisher.pop()) is not None:
        due, delivery = nxt
        fleet.clock.now = max(fleet.clock.now, due)
        fleet.deliver(delivery)
        assert fleet.deliver(delivery) in ("duplicate", "early")
    assert run_row(fleet, run_id)["output"] == EXPECTED
    assert types(fleet, run_id).count("operation.fan_in.fire") == 1


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_and_duplicated_deliveries_end_the_same_way(engine, seed):
    fleet = fleet_of(engine)
    run_id = submit(fleet, "mixed", {"items": [1, 2, 3, 4]})
    drain_chaotically(fleet, random.Random(seed), duplicate=0.5)
    assert run_row(fleet, run_id)["output"] == EXPECTED
    trace = types(fleet, run_id)
    assert trace.count("operation.fan_in.fire") == 1
    assert trace.count("operation.context.branch_table.create") == trace.count("operation.context.branch_table.drop")
    assert_ledger_held(engine, expect_runs=1)


def test_completions_racing_for_the_join_fire_it_once(engine, monkeypatch):
    """Two brains plan the last two arrivals from the same state: one commits, the other re-plans."""
    fleet = fleet_of(engine)
    run_id = submit(fleet, "mixed", {"items": [1, 2]})
    fleet.drain(skip=lambda d: d.task == "cogo.decide" and _kind(fleet, d.message_id) == "task_completed")
    with engine.connect() as conn:
        outcomes = conn.execute(select(agent_messages.c.id).where(agent_messages.c.run_id == run_id,
                                                                  agent_messages.c.kind == "task_completed")).all()
        stale = load_state(conn, run_id, fleet.registry)  # what the losing brain read before the winner committed
    assert len(outcomes) == 2
    assert fleet.brain.handle(outcomes[0].id) == "applied"

    loads = []

    def racing_load(conn, rid, registry, **kwargs):
        loads.append(kwargs.get("focus"))
        return stale if len(loads) == 1 else load_state(conn, rid, registry, **kwargs)

    monkeypatch.setattr(brain_module, "load_state", racing_load)
    assert fleet.brain.handle(outcomes[1].id) == "applied"
    # The stale plan hit the version check and was planned again: on what the arrival touches, then, as it fires
    # the join, on the whole state.
    assert len(loads) == 3 and loads[1] is not None and loads[2] is None
    fleet.drain()
    trace = types(fleet, run_id)
    assert trace.count("operation.fan_in.arrive") == 2 and trace.count("operation.fan_in.fire") == 1
    assert run_row(fleet, run_id)["status"] == "completed"


def _kind(fleet: Fleet, message_id: str) -> str:
    with fleet.engine.connect() as conn:
        return conn.execute(select(agent_messages.c.kind).where(agent_messages.c.id == message_id)).scalar_one()
