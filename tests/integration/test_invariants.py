"""The shared ledger-invariant check sees each way a ledger can break (so a fault test that passes means it)."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select, update

from bus.schema import agent_messages, bus_events, introspection_events
from coordinator.schema import fan_arrivals, fan_ins, runs
from tests.support.harness import Fleet, registry_of, submit
from tests.support.invariants import assert_ledger_held, ledger_problems
from workers.handler import WorkResult

FLOW = """
name: fan
start: each
budget: {maxTokens: 100}
nodes:
  each: {kind: foreach, items: input.items, body: work, join: all}
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w, budget: {maxTokens: 20}}, next: all}
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def metered(ctx, payload):
    ctx.meter(tokens=10)
    return WorkResult(output={"ok": True})


@pytest.fixture
def ended(engine):
    fleet = Fleet(engine, {("t", "work"): metered}, registry=registry_of(FLOW))
    run_id = submit(fleet, "fan", {"items": [1, 2, 3]})
    fleet.drain()
    return engine, run_id


def test_a_clean_run_holds(ended):
    engine, run_id = ended
    assert_ledger_held(engine, expect_runs=1)
    with engine.connect() as conn:
        assert conn.execute(select(runs.c.status, runs.c.spent_tokens)).one() == ("completed", 30)


def test_each_broken_invariant_is_named(ended):
    engine, run_id = ended
    with engine.begin() as conn:
        assignment = conn.execute(select(agent_messages.c.id).where(agent_messages.c.kind == "assignment")
                                  ).scalars().first()
        conn.execute(insert(bus_events).values(message_id=assignment, run_id=run_id, tenant="acme",
                                               kind="execute_done", attempt=1, created_at=0.0))
        fire = conn.execute(select(introspection_events).where(introspection_events.c.type == "operation.fan_in.fire")
                            ).one()._asdict()
        conn.execute(insert(introspection_events).values({k: v for k, v in fire.items() if k != "id"}))
        conn.execute(update(runs).where(runs.c.id == run_id).values(status="running", spent_tokens=130))
        conn.execute(update(fan_ins).where(fan_ins.c.run_id == run_id).values(arrived_count=2))
        conn.execute(insert(fan_arrivals).values(run_id=run_id, fan_id="gone", branch_index=0, token_id="x",
                                                 created_at=0.0))
    problems = "\n".join(ledger_problems(engine, expect_runs=2))
    assert "2 runs submitted, 1 recorded" in problems
    assert f"run {run_id} did not end: running" in problems
    assert f"assignment {assignment} succeeded 2 times" in problems
    assert "fired 2 times" in problems
    assert "130 tokens spent over a budget" in problems
    assert "but its settled assignments used 30" in problems
    assert "counts 2 arrivals; it has 3 arrival rows" in problems
    assert f"fan-in gone of run {run_id} counts 0 arrivals; it has 1 arrival rows" in problems


def test_an_open_row_is_lost_work(ended):
    engine, run_id = ended
    with engine.begin() as conn:
        conn.execute(update(agent_messages).where(agent_messages.c.kind == "assignment").values(status="dispatched"))
    problems = ledger_problems(engine)
    assert sum("left dispatched" in p for p in problems) == 3
