"""Budgets hold whatever the order of outcomes and settlements: issue 9's overspend, replayed message by message.

``parallel [a1→a2, b1→b2]``, each task's assignment budget 1,000 tokens, the run's 2,000, each task metering
920. The broker used to deliver b1's outcome to the brain *after* a2's admission; b1, done but not yet settled,
was counted nowhere, a2 fit, and the run spent 2,760. Here each order is forced with the in-process harness.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from bus import ledger
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, TASK_WORK
from bus.outbox import Delivery
from bus.routing import execute_queue
from bus.schema import agent_messages as m
from bus.schema import bus_events
from coordinator.brain import Brain
from coordinator.dispatcher import Dispatcher
from coordinator.explain import explain
from tests.support.harness import Fleet, events, overspent, registry_of, run_row, submit, take
from workers.handler import WorkResult

CHAINS = """
name: twin-chains
start: fan
budget: {maxTokens: 2000, maxCostUsd: 100}
nodes:
  fan: {kind: parallel, branches: [a1, b1], join: all}
  a1: {kind: task, route: {service: rag, role: embed},
       agent: {agent_id: w, budget: &b {maxTokens: 1000, maxCostUsd: 1}}, next: a2}
  a2: {kind: task, route: {service: rag, role: embed}, agent: {agent_id: w, budget: *b}, next: all}
  b1: {kind: task, route: {service: rag, role: embed}, agent: {agent_id: w, budget: *b}, next: b2}
  b2: {kind: task, route: {service: rag, role: embed}, agent: {agent_id: w, budget: *b}, next: all}
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def metering(tokens: dict[str, int]):
    """A handler that meters ``tokens[node]`` (920 by default) and succeeds."""
    def work(ctx, payload):
        ctx.meter(tokens=tokens.get(ctx.node_id, 920))
        return WorkResult(output={"node": ctx.node_id})
    return work


def assignment(fleet: Fleet, run_id: str, node: str) -> str:
    with fleet.engine.connect() as conn:
        rows = conn.execute(select(m.c.id, m.c.payload).where(m.c.run_id == run_id, m.c.kind == "assignment")).all()
    [found] = [r.id for r in rows if r.payload["__token"]["node_id"] == node]
    return found


def status(fleet: Fleet, message_id: str) -> str:
    with fleet.engine.connect() as conn:
        return conn.execute(select(m.c.status).where(m.c.id == message_id)).scalar_one()


def outcome_of(fleet: Fleet, assignment_id: str) -> str:
    """The id of the brain event that reports ``assignment_id``'s outcome."""
    with fleet.engine.connect() as conn:
        return conn.execute(select(m.c.id).where(m.c.causation_id == assignment_id,
                                                 m.c.kind.in_(("task_completed", "task_failed")))).scalar_one()


def start_both_chains(fleet: Fleet, *, run_b1: bool) -> str:
    """Start the run; a1 and b1 are admitted, a1 runs and completes, b1 runs only if ``run_b1``. Nothing is
    settled yet."""
    run_id = submit(fleet, "twin-chains")
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))  # start: a1 and b1 queued
    for _ in range(2):
        assert fleet.deliver(take(fleet, lambda d: d.task == TASK_EXECUTE)) == "dispatched"
    a1, b1 = assignment(fleet, run_id, "a1"), assignment(fleet, run_id, "b1")
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_WORK and d.message_id == a1)) == "done"
    if run_b1:
        assert fleet.deliver(take(fleet, lambda d: d.task == TASK_WORK and d.message_id == b1)) == "done"
    return run_id


def test_a_sibling_done_but_not_settled_still_counts(engine):
    fleet = Fleet(engine, {("rag", "embed"): metering({})}, registry=registry_of(CHAINS))
    run_id = start_both_chains(fleet, run_b1=True)
    a1, b1 = assignment(fleet, run_id, "a1"), assignment(fleet, run_id, "b1")
    # a1's outcome reaches the brain (settled: 920 spent, a2 queued); b1's outcome is held back in the broker.
    assert fleet.deliver(take(fleet, lambda d: d.message_id == outcome_of(fleet, a1))) == "applied"
    assert status(fleet, b1) == ledger.DONE
    a2 = assignment(fleet, run_id, "a2")
    # 920 settled + 920 recorded on b1 (done, unsettled) + a2's 1,000 > 2,000, and waiting cannot help.
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_EXECUTE and d.message_id == a2)) == "denied"
    assert overspent(engine, run_id) == []
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "failed"
    assert run["spent_tokens"] == 1840  # a1 + b1; a2 and b2 never ran
    assert overspent(engine, run_id) == []
    denied = [e["data"] for e in events(fleet, run_id, "dispatch.assignment.denied")]
    assert [d["code"] for d in denied] == ["budget.exceeded"]  # b2 is never created: the run failed on a2
    assert denied[0]["details"]["spent"] == 1840 and denied[0]["details"]["would_need"] == 2840


def _flat(items: list) -> list:
    """Every explained item, with those under a join's missing branches."""
    return [x for i in items for x in [i, *_flat([w for b in i.get("missing", []) for w in b["waiting_for"]])]]


def test_a_sibling_still_running_holds_its_whole_budget_and_the_next_task_waits(engine):
    fleet = Fleet(engine, {("rag", "embed"): metering({})}, registry=registry_of(CHAINS))
    run_id = start_both_chains(fleet, run_b1=False)
    a1, b1 = assignment(fleet, run_id, "a1"), assignment(fleet, run_id, "b1")
    assert fleet.deliver(take(fleet, lambda d: d.message_id == outcome_of(fleet, a1))) == "applied"
    a2 = assignment(fleet, run_id, "a2")
    # b1 may still spend its 1,000: a2 does not fit now, but would if b1 ended spending little — it waits.
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_EXECUTE and d.message_id == a2)) == "deferred"
    assert status(fleet, a2) == ledger.QUEUED
    [deferred] = events(fleet, run_id, "dispatch.assignment.deferred")
    assert deferred["data"]["reason"] == "budget" and deferred["data"]["waiting_for"] == [b1]
    with engine.connect() as conn:  # a person asking "why is this run waiting?" hears it in words
        why = [w for w in _flat(explain(conn, run_id)["waiting_for"]) if w.get("assignment_id") == a2][0]
    assert why["deferred"]["waiting_for"] == [b1]
    assert f"assignment {a2} waits for budget" in why["summary"] and b1 in why["summary"]
    assert "1000" in why["summary"] or "1,000" in why["summary"]
    fleet.drain()  # b1 spends 920; its settlement wakes a2, which is now refused for good
    run = run_row(fleet, run_id)
    assert run["status"] == "failed" and run["spent_tokens"] == 1840
    assert overspent(engine, run_id) == []
    with engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.message_id == a2))]
    assert kinds == ["execute_deferred", "budget_violation"]  # woken by b1's settlement: 1,840 + 1,000 cannot fit


def test_a_waiting_task_runs_once_its_sibling_ends_having_spent_little(engine):
    fleet = Fleet(engine, {("rag", "embed"): metering({"b1": 30, "b2": 30})}, registry=registry_of(CHAINS))
    run_id = start_both_chains(fleet, run_b1=False)
    a1 = assignment(fleet, run_id, "a1")
    assert fleet.deliver(take(fleet, lambda d: d.message_id == outcome_of(fleet, a1))) == "applied"
    a2 = assignment(fleet, run_id, "a2")
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_EXECUTE and d.message_id == a2)) == "deferred"
    b1 = assignment(fleet, run_id, "b1")
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_WORK and d.message_id == b1)) == "done"
    assert fleet.deliver(take(fleet, lambda d: d.message_id == outcome_of(fleet, b1))) == "applied"
    # b1's settlement wakes a2 at once (no wait for its back-off): 950 + a2's 1,000 fit.
    woken = take(fleet, lambda d: d.task == TASK_EXECUTE and d.message_id == a2 and d.countdown_s == 0)
    assert fleet.deliver(woken) == "dispatched"
    fleet.drain()
    run = run_row(fleet, run_id)
    # a1 920 + b1 30 + a2 920; then b2 (1,870 + 1,000) cannot fit and is refused: spend stays within budget.
    assert run["status"] == "failed" and run["spent_tokens"] == 1870
    assert overspent(engine, run_id) == []


def test_duplicates_of_a_deferred_admission_admit_it_once(engine):
    fleet = Fleet(engine, {("rag", "embed"): metering({"b1": 30, "b2": 30})}, registry=registry_of(CHAINS))
    run_id = start_both_chains(fleet, run_b1=False)
    a1 = assignment(fleet, run_id, "a1")
    fleet.deliver(take(fleet, lambda d: d.message_id == outcome_of(fleet, a1)))
    a2 = assignment(fleet, run_id, "a2")
    execute = take(fleet, lambda d: d.task == TASK_EXECUTE and d.message_id == a2)
    assert [fleet.deliver(execute) for _ in range(3)] == ["deferred", "early", "early"]  # duplicates wait too
    fleet.drain()
    with engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.message_id == a2))]
    assert kinds == ["execute_deferred", "execute_enqueued", "execute_done"]
    assert run_row(fleet, run_id)["status"] == "completed"


@pytest.mark.parametrize("attempt", range(4))
def test_settling_a_sibling_while_another_dispatcher_admits_never_overspends(engine, attempt):
    """Real threads: the brain settles b1 (usage moves from the row to the run in one commit) while a
    dispatcher admits a2. Whichever commits first, b1's 920 is counted exactly once, so a2 is refused."""
    fleet = Fleet(engine, {("rag", "embed"): metering({})}, registry=registry_of(CHAINS))
    run_id = start_both_chains(fleet, run_b1=True)
    a1, b1 = assignment(fleet, run_id, "a1"), assignment(fleet, run_id, "b1")
    fleet.deliver(take(fleet, lambda d: d.message_id == outcome_of(fleet, a1)))
    a2 = assignment(fleet, run_id, "a2")
    admission = take(fleet, lambda d: d.task == TASK_EXECUTE and d.message_id == a2)
    settlement = take(fleet, lambda d: d.message_id == outcome_of(fleet, b1))
    brain = Brain(engine=engine, publisher=fleet.publisher, registry=fleet.registry, shards=1, clock=fleet.clock)
    dispatcher = Dispatcher(engine=engine, publisher=fleet.publisher, clock=fleet.clock)
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def run(name, handler, message_id):
        barrier.wait()
        results[name] = handler(message_id)

    threads = [threading.Thread(target=run, args=("brain", brain.handle, settlement.message_id)),
               threading.Thread(target=run, args=("dispatcher", dispatcher.handle, admission.message_id))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {"brain": "applied", "dispatcher": "denied"}
    fleet.drain()
    assert overspent(engine, run_id) == []
    assert run_row(fleet, run_id)["spent_tokens"] == 1840


@pytest.mark.parametrize("attempt", range(3))
def test_two_dispatchers_racing_for_siblings_admit_one_and_defer_the_other(engine, attempt):
    """Real threads: a2's and b2's admissions race on two dispatchers after a1 and b1 settled with little spent;
    only one fits beside the other's reservation, and the one that waits runs after it."""
    fleet = Fleet(engine, {("rag", "embed"): metering({"a1": 10, "b1": 10})}, registry=registry_of(CHAINS))
    run_id = start_both_chains(fleet, run_b1=True)
    for node in ("a1", "b1"):
        fleet.deliver(take(fleet, lambda d, n=node: d.message_id == outcome_of(fleet, assignment(fleet, run_id, n))))
    pending = [take(fleet, lambda d, n=node: d.task == TASK_EXECUTE and d.message_id == assignment(fleet, run_id, n))
               for node in ("a2", "b2")]
    second = Dispatcher(engine=engine, publisher=fleet.publisher, clock=fleet.clock)
    barrier = threading.Barrier(2)
    results: list[str] = []

    def admit(dispatcher, delivery):
        barrier.wait()
        results.append(dispatcher.handle(delivery.message_id))

    threads = [threading.Thread(target=admit, args=pair) for pair in zip((fleet.dispatcher, second), pending,
                                                                          strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # 20 spent + 1,000 reserved + 1,000 asked > 2,000: the second waits for the first.
    assert sorted(results) == ["deferred", "dispatched"]
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "completed" and run["spent_tokens"] == 1860  # 940 + 1,000 fitted once it settled
    assert overspent(engine, run_id) == []


RACE = """
name: budget-race
start: fan
budget: {maxTokens: 2000, maxCostUsd: 100}
nodes:
  fan: {kind: parallel, branches: [fast, slow], join: first}
  fast: {kind: task, route: {service: t, role: fast}, agent: {agent_id: w, budget: &b {maxTokens: 1000}}, next: first}
  slow: {kind: task, route: {service: t, role: slow}, agent: {agent_id: w, budget: *b}, next: first}
  first: {kind: join, mode: any, next: after}
  after: {kind: task, route: {service: t, role: fast}, agent: {agent_id: w, budget: *b}, next: done}
  done: {kind: end}
"""


def race_fleet(engine, seen: dict, *, slow_tokens: int = 950, dies: bool = False) -> tuple[Fleet, str]:
    """``fast`` wins the any-join while ``slow``'s attempt is running: inside ``slow``'s handler, everything due
    is delivered (fast runs, its outcome cancels slow's token and abandons its assignment, ``after`` is asked
    for). Then ``slow`` meters ``slow_tokens`` and ends — or its worker dies (``dies``: the process exits
    mid-attempt, as with kill -9, so the attempt never writes anything)."""
    from tests.support.harness import settle

    def fast(ctx, payload):
        ctx.meter(tokens=100)
        return WorkResult(output={})

    def slow(ctx, payload):
        settle(fleet)
        seen["slow_status_while_running"] = status(fleet, ctx.assignment_id)
        seen["after"], seen["run_id"] = assignment(fleet, ctx.run_id, "after"), ctx.run_id
        seen["after_trace"] = [o for t, i, o in fleet.trace if i == seen["after"]]
        if dies:
            raise SystemExit("the worker process is gone")
        ctx.meter(tokens=slow_tokens)
        return WorkResult(output={})

    fleet = Fleet(engine, {("t", "fast"): fast, ("t", "slow"): slow}, registry=registry_of(RACE))
    return fleet, submit(fleet, "budget-race")


def retry_after(fleet: Fleet, seen: dict) -> None:
    """Send `after`'s admission again (the drains here drop its re-checks, which only wait)."""
    fleet.publisher.send([Delivery(TASK_EXECUTE, execute_queue(0), seen["after"])])


def test_an_abandoned_attempt_keeps_its_reservation_while_it_runs(engine):
    seen: dict = {}
    fleet, run_id = race_fleet(engine, seen)
    fleet.drain(skip=lambda d: d.message_id == seen.get("after"))
    # While slow's attempt ran, its assignment was abandoned (dead) but still held its 1,000 tokens:
    # 100 settled + 1,000 held + 1,000 asked > 2,000, so `after` waited instead of running beside it.
    assert seen["slow_status_while_running"] == ledger.DEAD
    assert seen["after_trace"] == ["deferred"]
    fleet.clock.now += fleet.settings.lease_s + 1
    fleet.reclaimer.sweep()
    retry_after(fleet, seen)
    fleet.drain()
    assert status(fleet, assignment(fleet, run_id, "slow")) == ledger.SETTLED
    assert overspent(engine, run_id) == []


def test_a_worker_that_dies_during_an_abandoned_attempt_holds_its_reservation_until_its_lease_ends(engine):
    seen: dict = {}
    fleet, run_id = race_fleet(engine, seen, dies=True)
    with pytest.raises(SystemExit):
        fleet.drain(skip=lambda d: d.message_id == seen.get("after"))
    fleet.drain(skip=lambda d: d.message_id == seen.get("after"))
    slow = assignment(fleet, run_id, "slow")
    assert seen["after_trace"] == ["deferred"]
    assert status(fleet, slow) == ledger.DEAD  # nobody reported it: the lease still holds its budget
    fleet.clock.now += 10
    assert fleet.dispatcher.handle(seen["after"]) == "deferred"
    fleet.clock.now += fleet.settings.lease_s  # the dead worker's lease runs out
    assert fleet.reclaimer.sweep().abandoned == 1
    retry_after(fleet, seen)
    fleet.drain()
    assert status(fleet, slow) == ledger.SETTLED
    run = run_row(fleet, run_id)
    assert run["status"] == "completed" and run["spent_tokens"] == 200  # fast + after; slow's usage died with it
    assert overspent(engine, run_id) == []
    with engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.message_id == slow)
                                              .order_by(bus_events.c.id))]
    assert kinds == ["execute_enqueued", "execute_cancelled", "lease_expired"]


def test_an_abandoned_attempts_usage_is_recorded_when_it_ends(engine):
    seen: dict = {}
    fleet, run_id = race_fleet(engine, seen)
    fleet.drain(skip=lambda d: d.message_id == seen.get("after"))
    slow = assignment(fleet, run_id, "slow")
    with engine.connect() as conn:
        usage = conn.execute(select(m.c.usage_tokens, m.c.lease_until).where(m.c.id == slow)).one()
    assert usage.usage_tokens == 950 and usage.lease_until is None  # recorded, and released at once
    retry_after(fleet, seen)
    fleet.drain()
    run = run_row(fleet, run_id)
    # 100 + 950 recorded; `after`'s 1,000 no longer fits: refused rather than overspent.
    assert run["status"] == "failed" and run["spent_tokens"] == 1050
    assert overspent(engine, run_id) == []
