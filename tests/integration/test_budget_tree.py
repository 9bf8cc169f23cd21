"""Budgets are admission control over the whole run tree: children draw from their root's budget."""

from __future__ import annotations

from sqlalchemy import select

from bus.schema import bus_events
from coordinator.store import run_view
from tests.support.harness import Fleet, registry_of, submit
from workers.handler import WorkResult

CHILD = """
name: child-work
start: work
nodes:
  work:
    kind: task
    route: {service: rag, role: embed}
    agent: {agent_id: w, budget: {maxCostUsd: 0.4, maxTokens: 100}}
    next: done
  done: {kind: end}
"""

PARENT = """
name: parent-budget
start: fan
budget: {maxCostUsd: 1.0, maxTokens: 1000}
nodes:
  fan: {kind: foreach, items: "input.items", body: child, join: all}
  child: {kind: subworkflow, workflow: child-work, next: all}
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def test_children_in_flight_cannot_spend_more_than_their_roots_budget(engine):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(CHILD, PARENT))
    run_id = submit(fleet, "parent-budget", {"items": [1, 2, 3]})
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
        audit = [r.kind for r in conn.execute(select(bus_events.c.kind).order_by(bus_events.c.id))]
    # Three assignments of $0.40 each were asked for at once under a $1.00 root budget: two fit, one is refused.
    assert audit.count("budget_violation") == 1
    assert audit.count("execute_done") == 2
    assert run["status"] == "failed"


def test_children_run_when_the_root_budget_covers_them(engine):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(CHILD, PARENT))
    run_id = submit(fleet, "parent-budget", {"items": [1, 2]})
    fleet.drain()
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
