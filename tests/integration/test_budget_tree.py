"""Budgets are admission control over the whole run tree: children draw from their root's budget."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from bus.schema import bus_events
from coordinator.schema import runs
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


def test_children_in_flight_wait_for_their_roots_budget_and_run_when_it_is_released(engine):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(CHILD, PARENT))
    run_id = submit(fleet, "parent-budget", {"items": [1, 2, 3]})
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
        audit = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.kind != "event_applied")
                                              .order_by(bus_events.c.id))]  # the assignments' moves
    # Three assignments of $0.40 each were asked for at once under a $1.00 root budget: two fit, the third
    # waits (deferred, not refused) and runs once the first two settle having spent nothing.
    assert audit[:3] == ["execute_enqueued", "execute_enqueued", "execute_deferred"]
    assert audit.count("budget_violation") == 0
    assert audit.count("execute_done") == 3
    assert run["status"] == "completed"


def test_children_in_flight_cannot_spend_more_than_their_roots_budget(engine):
    def spend(ctx, payload):
        ctx.meter(cost_usd=0.35)
        return WorkResult(output={})

    fleet = Fleet(engine, {("rag", "embed"): spend}, registry=registry_of(CHILD, PARENT))
    run_id = submit(fleet, "parent-budget", {"items": [1, 2, 3]})
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
        audit = [r.kind for r in conn.execute(select(bus_events.c.kind).order_by(bus_events.c.id))]
    # The third waits for the first two; they spend $0.70, so its $0.40 can no longer fit: refused.
    assert audit.count("execute_deferred") == 1
    assert audit.count("budget_violation") == 1
    assert audit.count("execute_done") == 2
    assert run["status"] == "failed" and run["error"]["code"] == "subworkflow.failed"
    with engine.connect() as conn:
        spent = conn.execute(select(func.sum(runs.c.spent_cost_usd)).where(runs.c.root_run_id == run_id)).scalar()
    assert spent == pytest.approx(0.7)


def test_children_run_when_the_root_budget_covers_them(engine):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(CHILD, PARENT))
    run_id = submit(fleet, "parent-budget", {"items": [1, 2]})
    fleet.drain()
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"


SOLO = """
name: solo-then-child
start: mine
budget: {maxCostUsd: 1.0, maxTokens: 1000}
nodes:
  mine:
    kind: task
    route: {service: rag, role: embed}
    agent: {agent_id: w, budget: {maxCostUsd: 0.5, maxTokens: 100}}
    next: child
  child: {kind: subworkflow, workflow: child-work, next: again}
  again:
    kind: task
    route: {service: rag, role: embed}
    agent: {agent_id: w, budget: {maxCostUsd: 0.5, maxTokens: 100}}
    next: done
  done: {kind: end}
"""


def test_the_roots_own_assignments_count_what_its_children_spent(engine):
    def spend(ctx, payload):
        ctx.meter(cost_usd=0.35)
        return WorkResult(output={})

    fleet = Fleet(engine, {("rag", "embed"): spend}, registry=registry_of(CHILD, SOLO))
    run_id = submit(fleet, "solo-then-child")
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
    # root spent 0.35, the child 0.35: the root's second task (budget 0.5) no longer fits in 1.0.
    assert run["status"] == "failed" and run["error"]["code"] == "budget.exceeded"


def test_a_malformed_budget_is_refused_at_ingress(engine):
    from tests.support.api import app_of, http, make_key

    client = http(app_of(Fleet(engine, {})), make_key(engine, "t"))
    for budget in ([1, 2], {"maxCostUsd": -5}, "abc", {"maxCostUsd": 1, "colour": "red"}):
        answer = client.post("/api/intents", json={"tenant": "t", "intent": "echo", "budget": budget})
        assert answer.status_code == 422, budget
        assert answer.json()["error"]["code"] == "request.invalid"
    ok = client.post("/api/intents", json={"tenant": "t", "intent": "echo", "budget": {"maxCostUsd": 2}})
    assert ok.status_code == 202
