"""Kill, drop and duplicate things, then check the ledger: nothing lost, nothing applied twice.

These run the real brain, dispatcher, runtime and reclaimer over a real database (SQLite and
PostgreSQL) with a recording bus that plays the broker; the real-process versions are in tests/e2e.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from sqlalchemy import select

from bus import introspection, ledger
from bus.celery_app import TASK_WORK
from bus.envelope import Intent
from bus.errors import WorkFailed
from bus.schema import agent_messages, bus_events
from coordinator import intents
from coordinator.definitions import Registry, parse_definition
from coordinator.store import run_view
from tests.support.harness import Fleet
from workers.handler import WorkResult


class Calls:
    """A handler that records its calls and fails as told."""

    def __init__(self, fail_first: int = 0, retryable: bool = True, sleep_s: float = 0.0, tokens: int = 1):
        self.calls, self.fail_first, self.retryable = 0, fail_first, retryable
        self.sleep_s, self.tokens = sleep_s, tokens

    def __call__(self, ctx, payload):
        self.calls += 1
        ctx.meter(tokens=self.tokens)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.calls <= self.fail_first:
            raise WorkFailed(f"flaky failure {self.calls}", retryable=self.retryable, code="test.flaky")
        return WorkResult(output={"calls": self.calls})


def submit(fleet: Fleet, intent: str = "embed", payload: dict | None = None) -> str:
    with fleet.engine.begin() as conn:
        run_id, delivery = intents.create_run(conn, Intent(tenant="acme", intent=intent, payload=payload or {}),
                                              intents.resolve(intent, fleet.registry), now=fleet.clock(), shards=1)
    fleet.publisher.send([delivery])
    return run_id


def audit(engine, run_id: str) -> list[str]:
    with engine.connect() as conn:
        return [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id)
                                             .order_by(bus_events.c.id))]


def trace(engine, run_id: str, prefix: str = "") -> list[dict]:
    with engine.connect() as conn:
        return introspection.read(conn, run_id, type_prefix=prefix or None)


def assignment(engine, run_id: str):
    with engine.connect() as conn:
        return conn.execute(select(agent_messages).where(agent_messages.c.run_id == run_id,
                                                         agent_messages.c.kind == "assignment")).one()


def run_status(engine, run_id: str) -> dict:
    with engine.connect() as conn:
        return run_view(conn, run_id)


def test_worker_killed_holding_an_assignment_completes_exactly_once(engine):
    handler = Calls()
    fleet = Fleet(engine, {("rag", "embed"): handler})
    run_id = submit(fleet)
    # Deliver until the work message is on the wire, then play a worker that claims it and dies.
    while (nxt := fleet.publisher.pop()) is not None:
        _, delivery = nxt
        if delivery.task == TASK_WORK:
            with engine.begin() as conn:
                assert ledger.claim(conn, delivery.message_id, lease_s=fleet.settings.lease_s, now=fleet.clock())
            break
        fleet.deliver(delivery)
    assert fleet.drain() == 0  # the dead worker's message is gone with it

    fleet.clock.now += fleet.settings.lease_s + 1
    swept = fleet.reclaimer.sweep()
    assert swept.expired == 1
    fleet.drain()

    assert run_status(engine, run_id)["status"] == "completed"
    assert handler.calls == 1
    row = assignment(engine, run_id)
    assert (row.status, row.attempts) == (ledger.SETTLED, 2)
    assert audit(engine, run_id) == ["execute_enqueued", "lease_expired", "execute_enqueued", "execute_done"]
    assert len(trace(engine, run_id, "decision.task.completed")) == 1


def test_a_flushed_broker_loses_nothing(engine):
    fleet = Fleet(engine, {("rag", "embed"): Calls()})
    run_id = submit(fleet)
    for stage in range(3):  # lose everything in flight at start, after admission, after the work
        lost = fleet.publisher.drop_all()
        assert lost, f"stage {stage}: something should have been in flight"
        fleet.clock.now += fleet.settings.stale_s + 1
        assert fleet.reclaimer.sweep().resent == 0  # suspected: it may be in a consumer's hands this instant
        assert fleet.reclaimer.sweep().resent == len(lost)  # still there a sweep later: lost
        nxt = fleet.publisher.pop()
        fleet.deliver(nxt[1])
    fleet.drain()
    assert run_status(engine, run_id)["status"] == "completed"
    assert audit(engine, run_id).count("reclaimed") == 3
    assert audit(engine, run_id).count("execute_done") == 1


def test_a_message_in_a_consumers_hands_is_not_resent(engine):
    """Taken off the queue but not yet written: neither queued nor moved on, for a moment. The first sweep
    only suspects it; by the next sweep the consumer has written, and nothing is sent twice."""
    fleet = Fleet(engine, {("rag", "embed"): Calls()})
    run_id = submit(fleet)
    _, taken = fleet.publisher.pop()  # the brain holds it; the queue is empty
    fleet.clock.now += fleet.settings.stale_s + 1
    assert fleet.reclaimer.sweep().resent == 0
    fleet.deliver(taken)
    assert fleet.reclaimer.sweep().resent == 0
    fleet.drain()
    assert run_status(engine, run_id)["status"] == "completed"
    assert "reclaimed" not in audit(engine, run_id)


def test_a_row_that_moves_on_while_the_reclaimer_asks_the_broker_is_not_lost(engine):
    """An attempt waiting out its backoff is re-admitted between the sweep's first read and its recount: it now
    belongs to a worker queue the sweep never measured. It is not lost, the sweep does not trip over it, and its
    old backoff does not make the dispatched row look stale."""
    fleet = Fleet(engine, {("rag", "embed"): Calls(fail_first=1)})
    run_id = submit(fleet)
    while (nxt := fleet.publisher.pop()) is not None:  # up to the first attempt's failure
        fleet.deliver(nxt[1])
        if assignment(engine, run_id).status == ledger.RETRY_WAIT:
            break
    _, readmission = fleet.publisher.pop()  # held: the dispatcher has not re-admitted it yet
    fleet.clock.now = assignment(engine, run_id).retry_at + fleet.settings.stale_s + 1

    def readmitted_meanwhile(_queue: str) -> int:
        fleet.deliver(readmission)  # retry_wait → dispatched while the broker is asked
        fleet.reclaimer.depth = lambda _q: 0
        return 0

    fleet.reclaimer.depth = readmitted_meanwhile
    assert fleet.reclaimer.sweep().resent == 0
    for _ in range(2):  # admitted just now: not stale, whatever its old backoff said (two sweeps would re-send)
        assert fleet.reclaimer.sweep().resent == 0
    fleet.drain()
    assert run_status(engine, run_id)["status"] == "completed"
    assert "reclaimed" not in audit(engine, run_id)


def test_reclaimer_leaves_a_busy_queue_alone(engine):
    fleet = Fleet(engine, {("rag", "embed"): Calls()})
    fleet.reclaimer.depth = lambda _queue: 5  # the consumer is behind, its messages are still queued
    submit(fleet)
    fleet.publisher.drop_all()
    fleet.clock.now += fleet.settings.stale_s + 1
    assert fleet.reclaimer.sweep().resent == 0


def test_fails_twice_then_succeeds_shows_three_attempts_with_backoff(engine):
    handler = Calls(fail_first=2)
    fleet = Fleet(engine, {("rag", "embed"): handler})
    run_id = submit(fleet)
    fleet.drain()
    assert run_status(engine, run_id)["status"] == "completed"
    assert handler.calls == 3
    started = [e["data"]["attempt"] for e in trace(engine, run_id, "dispatch.assignment.started")]
    assert started == [1, 2, 3]
    backoffs = [e["data"]["backoff_ms"] for e in trace(engine, run_id, "dispatch.retry.scheduled")]
    assert backoffs == [100, 200]  # initial 100 ms, coefficient 2, jitter centred by the harness's rng
    assert audit(engine, run_id) == ["execute_enqueued", "execute_failed", "execute_retry", "execute_enqueued",
                                     "execute_failed", "execute_retry", "execute_enqueued", "execute_done"]


def test_permanent_failure_fails_the_run_once(engine):
    handler = Calls(fail_first=10, retryable=False)
    fleet = Fleet(engine, {("rag", "embed"): handler})
    run_id = submit(fleet)
    fleet.drain()
    run = run_status(engine, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "test.flaky"
    assert handler.calls == 1
    assert audit(engine, run_id) == ["execute_enqueued", "execute_failed"]
    assert assignment(engine, run_id).status == ledger.SETTLED


def test_retries_exhausted(engine):
    fleet = Fleet(engine, {("rag", "embed"): Calls(fail_first=10)})
    run_id = submit(fleet)
    fleet.drain()
    assert run_status(engine, run_id)["status"] == "failed"
    assert audit(engine, run_id).count("execute_retry") == 2
    assert assignment(engine, run_id).attempts == 3


def _budget_registry(run_budget: float) -> Registry:
    registry = Registry.builtin()
    registry.add(parse_definition({
        "name": "budgeted", "start": "a", "budget": {"maxCostUsd": run_budget, "maxTokens": 1000},
        "nodes": {"a": {"kind": "task", "route": {"service": "rag", "role": "embed"},
                        "agent": {"agent_id": "x", "budget": {"maxCostUsd": 0.5, "maxTokens": 50}}, "next": "b"},
                  "b": {"kind": "end"}}}))
    return registry


def test_admission_denies_what_the_run_budget_cannot_cover(engine):
    handler = Calls()
    fleet = Fleet(engine, {("rag", "embed"): handler}, registry=_budget_registry(0.25))
    run_id = submit(fleet, intent="budgeted")
    fleet.drain()
    run = run_status(engine, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "budget.exceeded"
    assert handler.calls == 0
    assert audit(engine, run_id) == ["budget_violation"]
    denied = trace(engine, run_id, "dispatch.assignment.denied")
    assert denied[0]["data"]["details"]["limit"] == "maxCostUsd"


def test_worker_stops_work_that_breaks_its_budget_and_does_not_retry(engine):
    handler = Calls(tokens=51)  # the assignment allows 50
    fleet = Fleet(engine, {("rag", "embed"): handler}, registry=_budget_registry(5.0))
    run_id = submit(fleet, intent="budgeted")
    fleet.drain()
    assert run_status(engine, run_id)["error"]["code"] == "budget.exceeded"
    assert audit(engine, run_id) == ["execute_enqueued", "budget_violation", "execute_failed"]
    assert handler.calls == 1


@pytest.mark.timeout(30)
def test_ttl_guard_interrupts_an_overrunning_handler(sqlite_engine):
    registry = Registry.builtin()
    registry.add(parse_definition({
        "name": "quick", "start": "a",
        "nodes": {"a": {"kind": "task", "route": {"service": "rag", "role": "embed"},
                        "agent": {"agent_id": "x", "ttl_ms": 200}, "retry": {"maximum_attempts": 1}, "next": "b"},
                  "b": {"kind": "end"}}}))
    fleet = Fleet(sqlite_engine, {("rag", "embed"): Calls(sleep_s=5)}, registry=registry)
    run_id = submit(fleet, intent="quick")
    fleet.drain()
    assert run_status(sqlite_engine, run_id)["error"]["code"] == "ttl.expired"
    assert "ttl_expired" in audit(sqlite_engine, run_id)


def test_retries_share_one_budget_and_the_run_is_charged_for_every_attempt(engine):
    registry = Registry.builtin()
    registry.add(parse_definition({
        "name": "metered", "start": "a",
        "nodes": {"a": {"kind": "task", "route": {"service": "rag", "role": "embed"},
                        "agent": {"agent_id": "x", "budget": {"maxCostUsd": 1.0, "maxTokens": 100}},
                        "retry": {"maximum_attempts": 5, "initial_interval_ms": 10}, "next": "b"},
                  "b": {"kind": "end"}}}))
    handler = Calls(fail_first=10, tokens=40)  # 40 tokens per attempt; the budget is 100 for all attempts
    fleet = Fleet(engine, {("rag", "embed"): handler}, registry=registry)
    run_id = submit(fleet, intent="metered")
    fleet.drain()
    run = run_status(engine, run_id)
    assert handler.calls == 3  # the third attempt breaks the shared budget (120 > 100) and is not retried
    assert run["error"]["code"] == "budget.exceeded"
    assert audit(engine, run_id).count("budget_violation") == 1
    assert assignment(engine, run_id).usage_tokens == 120
    assert run["spent_tokens"] == 120


def test_a_lost_row_is_resent_even_while_its_queue_is_busy(engine):
    fleet = Fleet(engine, {("rag", "embed"): Calls()})
    submit(fleet)
    submit(fleet)
    submit(fleet)
    fleet.publisher.drop_all()
    fleet.reclaimer.depth = lambda _queue: 2  # traffic keeps the queue non-empty, but 3 rows are stale
    fleet.clock.now += fleet.settings.stale_s + 1
    assert fleet.reclaimer.sweep().resent == 0
    assert fleet.reclaimer.sweep().resent == 3
    fleet.clock.now += 1
    assert fleet.reclaimer.sweep().resent == 0  # re-sent at most once per stale_s


def test_a_model_outside_the_allow_list_is_denied(engine):
    registry = Registry.builtin()
    registry.add(parse_definition({
        "name": "pricey", "start": "a",
        "nodes": {"a": {"kind": "task", "route": {"service": "rag", "role": "embed"},
                        "agent": {"agent_id": "x", "model": "gpt-9-ultra"}, "next": "b"}, "b": {"kind": "end"}}}))
    handler = Calls()
    fleet = Fleet(engine, {("rag", "embed"): handler}, registry=registry,
                  settings=replace(Fleet.__dataclass_fields__["settings"].default_factory(),
                                   allowed_models="cogo-local, gpt-4o-mini"))
    run_id = submit(fleet, intent="pricey")
    fleet.drain()
    assert run_status(engine, run_id)["error"]["code"] == "policy.model_denied"
    assert audit(engine, run_id) == ["policy_denied"] and handler.calls == 0
