"""Dead letters an operator can act on (``coordinator/dead_letters.py``), on both ledgers through the real brain,
dispatcher, runtime and reclaimer: an assignment out of attempts is held (its run waits, ``explain`` says why),
re-queued (with or without a new budget) to complete its run, or discarded to fail it with the recorded error —
each exactly once, audited with who acted, budgets settled once, the ledger's invariants holding after each."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from bus import ledger
from bus.celery_app import TASK_WORK
from bus.envelope import AssignmentEnvelope, Budget
from bus.errors import WorkFailed
from bus.schema import agent_messages as m
from bus.schema import bus_events
from bus.settings import Settings
from coordinator import dead_letters
from coordinator.explain import explain
from coordinator.schema import runs
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, events, overspent, registry_of, run_row, submit, take
from tests.support.invariants import assert_ledger_held
from workers.handler import WorkResult

FRAGILE = """
name: fragile
start: work
budget: {maxCostUsd: 10.0, maxTokens: 10000}
nodes:
  work:
    kind: task
    route: {service: t, role: fragile}
    agent: {agent_id: w, budget: {maxCostUsd: 1.0, maxTokens: 100}}
    retry: {maximum_attempts: 3, initial_interval_ms: 10, deadLetter: true}
    output: work
    next: done
  done: {kind: end, output: {work: context.work}}
"""
PLAIN = """
name: plain
start: work
nodes:
  work:
    kind: task
    route: {service: t, role: fragile}
    agent: {agent_id: w}
    next: done
  done: {kind: end}
"""
TOKENS, COST = 10, 0.25
"""What every attempt of the fragile handler meters."""


class Fragile:
    """Fails every attempt (after metering its spend) until it is fixed; then succeeds."""

    def __init__(self):
        self.fixed = False
        self.calls = 0

    def __call__(self, ctx, _input):
        self.calls += 1
        ctx.meter(tokens=TOKENS, cost_usd=COST)
        if not self.fixed:
            raise WorkFailed("the model endpoint is down")
        return WorkResult(output={"attempt": ctx.attempt, "spent_before": ctx.usage.tokens - TOKENS})


@pytest.fixture
def world(engine):
    handler = Fragile()
    fleet = Fleet(engine, {("t", "fragile"): handler}, registry=registry_of(FRAGILE, PLAIN))
    return fleet, handler


def _held(fleet, workflow: str = "fragile", tenant: str = "acme") -> tuple[str, str]:
    """Submit a run whose only task fails every attempt; returns (run id, its held dead letter's id)."""
    run_id = submit(fleet, workflow, tenant=tenant)
    fleet.drain()
    with fleet.engine.connect() as conn:
        row = conn.execute(select(m).where(m.c.run_id == run_id, m.c.kind == "assignment")).one()
    assert (row.status, row.dead_letter, row.lease_until) == (ledger.DEAD, "held", None)
    return run_id, row.id


def _row(fleet, letter_id: str):
    with fleet.engine.connect() as conn:
        return conn.execute(select(m).where(m.c.id == letter_id)).one()


def _counters(fleet, run_id: str) -> tuple:
    with fleet.engine.connect() as conn:
        r = conn.execute(select(runs).where(runs.c.id == run_id)).one()
    return (r.spent_tokens, r.tree_spent_tokens, r.tree_held_tokens, r.tree_in_flight)


def _audit(fleet, letter_id: str, kind: str) -> list[dict]:
    with fleet.engine.connect() as conn:
        return [r.detail for r in conn.execute(select(bus_events.c.detail).where(
            bus_events.c.message_id == letter_id, bus_events.c.kind == kind).order_by(bus_events.c.id))]


def test_an_exhausted_assignment_is_held_and_its_run_waits_saying_why(world):
    fleet, handler = world
    run_id, letter_id = _held(fleet)
    assert handler.calls == 3
    assert run_row(fleet, run_id)["status"] not in ("completed", "failed", "cancelled")
    with fleet.engine.connect() as conn:
        said = explain(conn, run_id)
    assert said["waiting_for"][0]["dead_letter"] == "held"
    assert (f"assignment {letter_id} is a dead letter after 3 attempts (work.failed: the model endpoint is down); "
            f"an operator can re-queue or discard it: cogo dead-letters requeue {letter_id}") in said["summary"]
    assert "decision.task.failed" not in [e["type"] for e in events(fleet, run_id)]
    assert events(fleet, run_id, "dispatch.assignment.dead_lettered")[0]["data"]["assignment_id"] == letter_id
    # Held, it still holds its budget, and what its attempts spent counts against the tree (not settled yet).
    assert _counters(fleet, run_id) == (0, 0, 100, 1)
    assert overspent(fleet.engine, run_id) == []
    # The reclaimer's duty 3 (abandoned attempts) leaves it alone: it has no lease.
    fleet.clock.now += 10 * fleet.settings.lease_s
    assert fleet.reclaimer.sweep().abandoned == 0
    assert _row(fleet, letter_id).status == ledger.DEAD


@pytest.mark.parametrize("new_budget", [None, {"maxCostUsd": 2.0, "maxTokens": 200}])
def test_a_requeued_dead_letter_completes_its_run_with_its_spend_settled_once(world, new_budget):
    fleet, handler = world
    run_id, letter_id = _held(fleet)
    key = make_key(fleet.engine, "acme", ["runs:read", "runs:cancel"])
    handler.fixed = True
    answer = http(app_of(fleet), key).post(f"/api/dead-letters/{letter_id}/requeue",
                                           json={"budget": new_budget} if new_budget else {})
    assert answer.status_code == 200, answer.text
    assert answer.json()["settled"] == {"tokens": 3 * TOKENS, "cost_usd": 3 * COST, "model": "cogo-local",
                                        "released": {"tokens": 100, "cost_usd": 1.0}}
    # The spend of the three failed attempts is settled, the hold released: the re-admission reserves afresh.
    assert _counters(fleet, run_id) == (3 * TOKENS, 3 * TOKENS, 0, 0)
    assert overspent(fleet.engine, run_id) == []
    row = _row(fleet, letter_id)
    assert (row.status, row.dead_letter, row.attempts, row.max_attempts) == (ledger.QUEUED, "requeued", 3, 6)
    assert (row.usage_tokens, row.held_tokens) == (0, None)
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "completed"
    # A new set of attempts, starting from nothing spent: the budget is the new one (or the old one, whole again).
    assert run["output"] == {"work": {"attempt": 4, "spent_before": 0}}
    budget = AssignmentEnvelope.of(_row(fleet, letter_id).payload).contract().budget
    assert budget == (Budget.model_validate(new_budget) if new_budget else Budget(max_cost_usd=1.0, max_tokens=100))
    assert _counters(fleet, run_id) == (4 * TOKENS, 4 * TOKENS, 0, 0)
    assert_ledger_held(fleet.engine)
    [audit] = _audit(fleet, letter_id, "dead_letter_requeued")
    assert (audit["by"], audit["tenant"], audit["budget"]) == ("key:test acme", "acme", new_budget)
    assert [e["type"] for e in events(fleet, run_id, "dispatch.assignment.")].count(
        "dispatch.assignment.requeued") == 1


def test_a_discarded_dead_letter_fails_its_run_with_the_recorded_error_and_cannot_be_requeued(world):
    fleet, _handler = world
    run_id, letter_id = _held(fleet)
    client = http(app_of(fleet), make_key(fleet.engine, "acme", ["runs:read", "runs:cancel"]))
    answer = client.post(f"/api/dead-letters/{letter_id}/discard", json={"reason": "the endpoint is gone"})
    assert answer.status_code == 200, answer.text
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "failed"
    assert (run["error"]["code"], run["error"]["message"]) == ("work.failed", "the model endpoint is down")
    assert _counters(fleet, run_id) == (3 * TOKENS, 3 * TOKENS, 0, 0)
    assert_ledger_held(fleet.engine)
    [audit] = _audit(fleet, letter_id, "dead_letter_discarded")
    assert (audit["by"], audit["reason"]) == ("key:test acme", "the endpoint is gone")
    again = client.post(f"/api/dead-letters/{letter_id}/requeue", json={})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "dead_letter.not_held")
    shown = client.get(f"/api/dead-letters/{letter_id}").json()
    kinds = [h["kind"] for h in shown["history"]]
    assert kinds[-2:] == ["dead_letter_held", "dead_letter_discarded"] and kinds.count("execute_failed") == 3
    assert "dispatch.assignment.discarded" in [e["type"] for e in shown["events"]]


def test_a_double_click_requeues_once(world):
    fleet, handler = world
    run_id, letter_id = _held(fleet)
    handler.fixed = True
    who = dead_letters.Actor("operator", "acme")
    barrier, outcomes = threading.Barrier(2), []

    def click():
        barrier.wait()
        try:
            with fleet.engine.begin() as conn:
                acted = dead_letters.requeue(conn, letter_id, by=who, tenant="acme", now=fleet.clock())
            outcomes.append(acted)
        except dead_letters.DeadLetterNotHeld as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(map(str, (o if isinstance(o, str) else "acted" for o in outcomes))) == [
        "acted", "dead_letter.not_held"]
    fleet.publisher.send([next(o for o in outcomes if not isinstance(o, str)).delivery])
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"
    assert len(_audit(fleet, letter_id, "dead_letter_requeued")) == 1
    assert _counters(fleet, run_id) == (4 * TOKENS, 4 * TOKENS, 0, 0)
    assert_ledger_held(fleet.engine)


def test_a_lease_expired_assignment_out_of_attempts_is_held_by_the_reclaimer(engine):
    handler = Fragile()
    fleet = Fleet(engine, {("t", "fragile"): handler}, registry=registry_of(PLAIN),
                  settings=Settings(broker_url="memory://", dead_letter="hold").checked())  # the fleet's default
    run_id = submit(fleet, "plain")
    fleet.drain(skip=lambda d: d.task == TASK_WORK)  # the worker that takes it dies before it writes anything
    with engine.connect() as conn:
        letter_id = conn.execute(select(m.c.id).where(m.c.run_id == run_id, m.c.kind == "assignment")).scalar_one()
    with engine.begin() as conn:
        assert ledger.claim(conn, letter_id, lease_s=fleet.settings.lease_s, now=fleet.clock()) is not None
    fleet.clock.now += fleet.settings.lease_s + 1
    swept = fleet.reclaimer.sweep()
    assert (swept.dead, swept.deliveries) == (1, [])  # held: nothing reported
    row = _row(fleet, letter_id)
    assert (row.status, row.dead_letter, row.lease_until) == (ledger.DEAD, "held", None)
    with engine.connect() as conn:
        assert "work: assignment" in explain(conn, run_id)["summary"]
        assert "(lease.expired: worker lost attempt 1)" in explain(conn, run_id)["summary"]
    fleet.clock.now += 10 * fleet.settings.lease_s
    assert fleet.reclaimer.sweep().abandoned == 0
    handler.fixed = True
    with engine.begin() as conn:
        acted = dead_letters.requeue(conn, letter_id, by=dead_letters.Actor("ops", "acme"), tenant=None,
                                     now=fleet.clock())
    fleet.publisher.send([acted.delivery])
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"
    assert_ledger_held(engine)


def test_another_tenants_letter_is_not_found_and_the_list_is_filtered(world):
    fleet, _handler = world
    _run, letter_id = _held(fleet, tenant="acme")
    app = app_of(fleet)
    other = http(app, make_key(fleet.engine, "globex", ["runs:read", "runs:cancel"]))
    for method, path in (("get", ""), ("post", "/requeue"), ("post", "/discard")):
        answer = other.request(method.upper(), f"/api/dead-letters/{letter_id}{path}",
                               **({"json": {}} if method == "post" else {}))
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "dead_letter.not_found"), path
    assert other.get("/api/dead-letters").json() == {"dead_letters": []}
    assert other.get("/api/dead-letters", params={"tenant": "acme"}).json() == {"dead_letters": []}
    own = http(app, make_key(fleet.engine, "acme", ["runs:read"]))
    assert [d["id"] for d in own.get("/api/dead-letters").json()["dead_letters"]] == [letter_id]
    forbidden = own.post(f"/api/dead-letters/{letter_id}/requeue", json={})
    assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (403, "auth.scope")
    admin = http(app, make_key(fleet.engine, "root", ["admin"]))
    assert [d["id"] for d in admin.get("/api/dead-letters", params={"tenant": "acme"}).json()["dead_letters"]] == [
        letter_id]
    assert admin.get("/api/dead-letters", params={"tenant": "globex"}).json() == {"dead_letters": []}
    assert _row(fleet, letter_id).dead_letter == "held"


def test_a_new_budget_over_the_runs_budget_is_refused_and_nothing_changes(world):
    fleet, _handler = world
    run_id, letter_id = _held(fleet)
    client = http(app_of(fleet), make_key(fleet.engine, "acme", ["runs:read", "runs:cancel"]))
    answer = client.post(f"/api/dead-letters/{letter_id}/requeue",
                         json={"budget": {"maxCostUsd": 50.0, "maxTokens": 100}})
    assert (answer.status_code, answer.json()["error"]["code"]) == (422, "budget.over_ceiling")
    assert "run " + run_id in answer.json()["error"]["message"]
    assert _row(fleet, letter_id).dead_letter == "held"
    assert _counters(fleet, run_id) == (0, 0, 100, 1)
    assert client.post(f"/api/dead-letters/{letter_id}/requeue",
                       json={"budget": {"maxCostUsd": "NaN", "maxTokens": 1}}).status_code == 422


def test_without_a_dead_letter_policy_an_exhausted_assignment_fails_its_run_at_once(world):
    fleet, _handler = world
    run_id = submit(fleet, "plain")
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "failed"
    with fleet.engine.connect() as conn:
        assert conn.execute(select(m.c.dead_letter).where(m.c.run_id == run_id, m.c.kind == "assignment")
                            ).scalar_one() is None
    assert_ledger_held(fleet.engine)


def test_a_held_letter_is_settled_when_its_run_is_cancelled(world):
    fleet, _handler = world
    run_id, letter_id = _held(fleet)
    client = http(app_of(fleet), make_key(fleet.engine, "acme", ["runs:read", "runs:cancel"]))
    assert client.post(f"/api/runs/{run_id}/cancel", json={"reason": "give up"}).status_code == 202
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "cancelled"
    assert _row(fleet, letter_id).status == ledger.SETTLED
    answer = client.post(f"/api/dead-letters/{letter_id}/discard", json={})
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "dead_letter.not_held")
    assert_ledger_held(fleet.engine)


def test_a_requeue_whose_message_the_broker_lost_is_sent_again_by_the_reclaimer(world):
    fleet, handler = world
    run_id, letter_id = _held(fleet)
    handler.fixed = True
    with fleet.engine.begin() as conn:
        acted = dead_letters.requeue(conn, letter_id, by=dead_letters.Actor("ops", "acme"), tenant=None,
                                     now=fleet.clock())
    fleet.publisher.send([acted.delivery])
    take(fleet, lambda d: d.message_id == letter_id)  # the broker loses it
    for _ in range(2):  # two sweeps must agree that it is lost
        fleet.clock.now += fleet.settings.stale_s + 1
        fleet.reclaimer.sweep()
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"
    assert_ledger_held(fleet.engine)
