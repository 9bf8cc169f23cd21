"""Poison events are dead-lettered, not re-sent for ever; two dispatchers cannot both take the last budget."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from bus import introspection
from bus.celery_app import TASK_EXECUTE
from bus.schema import agent_messages, bus_events
from coordinator import brain as brain_module
from coordinator.brain import MAX_CRASHES
from coordinator.dispatcher import Dispatcher
from coordinator.schema import runs
from coordinator.store import run_view
from tests.support.harness import Fleet, registry_of, submit
from workers.handler import WorkResult

TWINS = """
name: twins
start: fan
budget: {maxCostUsd: 1.0, maxTokens: 1000}
nodes:
  fan: {kind: parallel, branches: [a, b], join: all}
  a: {kind: task, route: {service: rag, role: embed}, agent: {agent_id: w, budget: &b {maxCostUsd: 0.6, maxTokens: 9}},
      next: all}
  b: {kind: task, route: {service: rag, role: embed}, agent: {agent_id: w, budget: *b}, next: all}
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def test_an_event_that_crashes_the_brain_is_rejected_after_a_few_tries(engine, monkeypatch):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})})
    run_id = submit(fleet, "embed")
    start = fleet.publisher.pop()[1]

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in planning")

    monkeypatch.setattr(brain_module, "plan", broken)
    outcomes = [fleet.deliver(start) for _ in range(MAX_CRASHES + 2)]
    assert outcomes == ["crashed"] * (MAX_CRASHES - 1) + ["rejected", "duplicate", "duplicate"]
    with engine.connect() as conn:
        run = run_view(conn, run_id)
        row = conn.execute(select(agent_messages).where(agent_messages.c.id == start.message_id)).one()
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id))]
    assert run["status"] == "failed" and run["error"]["code"] == "brain.crashed"
    assert row.status == "failed" and "a bug in planning" in row.last_error
    assert kinds == ["event_rejected"]


@pytest.mark.parametrize("attempt", range(3))
def test_two_dispatchers_cannot_both_admit_the_last_of_a_budget(engine, attempt):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(TWINS))
    run_id = submit(fleet, "twins")
    pending = []
    while len(pending) < 2:
        _, delivery = fleet.publisher.pop()
        if delivery.task == TASK_EXECUTE:
            pending.append(delivery)
        else:
            fleet.deliver(delivery)
    second = Dispatcher(engine=engine, publisher=fleet.publisher, clock=fleet.clock)
    barrier = threading.Barrier(2)
    results: list[str] = []

    def admit(dispatcher, delivery):
        barrier.wait()
        results.append(dispatcher.handle(delivery.message_id))

    pairs = zip((fleet.dispatcher, second), pending, strict=True)
    threads = [threading.Thread(target=admit, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # One fits; the other's $0.60 is held by the first, which may still spend it: it waits, it is not denied.
    assert sorted(results) == ["deferred", "dispatched"]
    fleet.drain()  # the first spends nothing; once it settles, the second fits and runs
    with engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id))]
        assert run_view(conn, run_id)["status"] == "completed"
    assert kinds.count("execute_enqueued") == 2 and kinds.count("execute_deferred") == 1


TIMED = """
name: timed
start: slow
nodes:
  slow:
    kind: task
    route: {service: rag, role: embed}
    agent: {agent_id: w}
    timeout_ms: 1000
    retry: {maximum_attempts: 5, initial_interval_ms: 10}
    next: done
  done: {kind: end}
"""


def test_cancel_abandons_an_assignment_already_dispatched(engine):
    from coordinator.commands import cancel  # the API's cancel, without HTTP

    calls = []
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: calls.append(1) or WorkResult(output={})})
    run_id = submit(fleet, "embed")
    while (nxt := fleet.publisher.pop())[1].task != "cogo.work":
        fleet.deliver(nxt[1])
    work = nxt[1]  # admitted and on its way to a worker
    with engine.begin() as conn:
        delivery = cancel(conn, run_id, reason="stop", now=fleet.clock(), shards=1)
    fleet.publisher.send([delivery])
    fleet.drain()
    assert fleet.deliver(work) == "duplicate"  # the worker finds the assignment gone
    assert calls == []
    with engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id))]
        assert run_view(conn, run_id)["status"] == "cancelled"
    assert kinds == ["execute_enqueued", "execute_cancelled"]


def test_a_node_timeout_stops_the_retries_of_its_assignment(engine):
    from bus.errors import WorkFailed

    calls = []

    def always_fails(ctx, payload):
        calls.append(ctx.attempt)
        raise WorkFailed("nope", retryable=True)

    fleet = Fleet(engine, {("rag", "embed"): always_fails}, registry=registry_of(TIMED))
    run_id = submit(fleet, "timed")
    fleet.drain(skip=lambda d: d.task == "cogo.execute" and d.countdown_s > 0)  # the retry is lost in transit
    fleet.clock.now += 2  # the node's timeout fires
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
        row = conn.execute(select(agent_messages).where(agent_messages.c.run_id == run_id,
                                                        agent_messages.c.kind == "assignment")).one()
    assert run["error"]["code"] == "node.timeout"
    # Abandoned between attempts (no attempt in flight holds it): dead, and settled by the brain at once.
    assert row.status == "settled" and row.lease_until is None and calls == [1]
    with engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id))]
    assert "execute_cancelled" in kinds and "execute_done" not in kinds


@pytest.mark.parametrize("attempt", range(3))
def test_two_brains_on_the_same_event_apply_it_once(engine, attempt):
    from coordinator.brain import Brain

    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})})
    run_id = submit(fleet, "embed")
    start = fleet.publisher.pop()[1]
    other = Brain(engine=engine, publisher=fleet.publisher, registry=fleet.registry, shards=1, clock=fleet.clock)
    barrier = threading.Barrier(2)
    results: list[str] = []

    def apply(brain):
        barrier.wait()
        results.append(brain.handle(start.message_id))

    threads = [threading.Thread(target=apply, args=(b,)) for b in (fleet.brain, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["applied", "duplicate"]
    with engine.connect() as conn:
        starts = [e for e in introspection.read(conn, run_id) if e["type"] == "decision.routing.start"]
        assignments = conn.execute(select(agent_messages).where(agent_messages.c.run_id == run_id,
                                                                agent_messages.c.kind == "assignment")).all()
    assert len(starts) == 1 and len(assignments) == 1


PARENT = """
name: parent
start: down
nodes:
  down: {kind: subworkflow, workflow: child, next: done}
  done: {kind: end}
"""
CHILD = """
name: child
start: work
nodes:
  work: {kind: task, route: {service: rag, role: embed}, agent: {agent_id: w}, next: done}
  done: {kind: end}
"""


def test_a_child_whose_brain_gives_up_fails_through_the_planner_and_its_parent_hears_of_it(engine, monkeypatch):
    """The brain crashes on every outcome of the child run: the child fails (``brain.crashed``) as any failure
    does — a planned ``decision.workflow.fail`` — and its parent ends instead of waiting for ever."""
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(PARENT, CHILD))
    parent_id = submit(fleet, "parent")
    real_plan = brain_module.plan

    def crashes_on_the_childs_outcome(state, event, **kwargs):
        if event.kind == "task_completed" and state.run.parent_run_id:
            raise RuntimeError("a bug in planning")
        return real_plan(state, event, **kwargs)

    monkeypatch.setattr(brain_module, "plan", crashes_on_the_childs_outcome)
    outcomes = []
    while (nxt := fleet.publisher.pop()) is not None:
        fleet.clock.now = max(fleet.clock.now, nxt[0])
        outcomes.append(fleet.deliver(nxt[1]))
        if outcomes[-1] == "crashed":  # the broker redelivers it (as the reclaimer would)
            fleet.publisher.send([nxt[1]])
    assert outcomes.count("crashed") == MAX_CRASHES - 1 and "rejected" in outcomes
    with engine.connect() as conn:
        child = conn.execute(select(runs).where(runs.c.parent_run_id == parent_id)).one()
        child_trace = [e["type"] for e in introspection.read(conn, child.id)]
    assert (child.status, child.error["code"]) == ("failed", "brain.crashed")
    assert "decision.workflow.fail" in child_trace  # planned, so replay and explain see it
    parent = run_view_of(engine, parent_id)
    assert parent["status"] == "failed" and parent["error"]["code"] == "subworkflow.failed", parent


def run_view_of(engine, run_id: str) -> dict:
    with engine.connect() as conn:
        return run_view(conn, run_id)


def test_fail_fast_raises_a_planner_bug_in_the_test(engine, monkeypatch):
    """The harness's ``fail_fast``: a planner exception surfaces where the test can see it, not as a crashed run."""
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})}, fail_fast=True)
    submit(fleet, "embed")

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in planning")

    monkeypatch.setattr(brain_module, "plan", broken)
    with pytest.raises(RuntimeError, match="a bug in planning"):
        fleet.drain()


def _metered(ctx, payload):
    ctx.meter(tokens=7)
    return WorkResult(output={"ok": True})


def test_an_outcome_the_brain_gives_up_on_is_still_settled(engine, monkeypatch):
    fleet = Fleet(engine, {("rag", "embed"): _metered})
    run_id = submit(fleet, "embed", {"documents": [{"id": "d1", "text": "settle me"}]})
    real = brain_module.plan

    def broken_on_outcomes(state, event, *, now):
        if event.kind == "task_completed":
            raise RuntimeError("a bug in planning outcomes")
        return real(state, event, now=now)

    monkeypatch.setattr(brain_module, "plan", broken_on_outcomes)
    held = []
    fleet.drain(skip=lambda d: d.task == "cogo.decide" and held.append(d) is None and _is_outcome(engine, d))
    [outcome] = [d for d in held if _is_outcome(engine, d)]
    assert [fleet.deliver(outcome) for _ in range(MAX_CRASHES)] == ["crashed"] * (MAX_CRASHES - 1) + ["rejected"]
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
        assignment = conn.execute(select(agent_messages).where(agent_messages.c.run_id == run_id,
                                                               agent_messages.c.kind == "assignment")).one()
    assert run["status"] == "failed" and run["error"]["code"] == "brain.crashed"
    assert assignment.status == "settled" and assignment.usage_tokens == 7
    assert run["spent_tokens"] == assignment.usage_tokens  # what it spent reached its run, once


def _is_outcome(engine, delivery) -> bool:
    with engine.connect() as conn:
        kind = conn.execute(select(agent_messages.c.kind).where(agent_messages.c.id == delivery.message_id)).scalar()
    return kind == "task_completed"
