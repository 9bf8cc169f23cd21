"""Admissions batched as the publisher sends them (``bus.outbox.messages``: a step's fan-out in one message,
one dispatcher transaction) give the same results as one at a time: every golden history recorded batched
equals the one recorded one at a time, event for event; a batch is one transaction, so a failure in it
leaves every row as it was; and the publisher groups only what it may."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from bus import ledger
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, TASK_WORK
from bus.outbox import BATCH_MAX, Delivery, messages
from bus.schema import agent_messages as m
from coordinator.store import run_view
from tests.golden.record import SCENARIOS, record
from tests.support.harness import Fleet, registry_of, submit, take
from tests.support.invariants import assert_ledger_held
from workers.handler import WorkResult

HERE = Path(__file__).parent.parent / "golden"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_golden_history_recorded_batched_is_the_one_recorded_one_at_a_time(scenario, tmp_path):
    batched = record(scenario, tmp_path, batched=True)
    assert _ids_in_order(batched) == _ids_in_order(json.loads((HERE / f"{scenario.name}.json").read_text()))


def _ids_in_order(doc: dict) -> str:
    """The document with each random id replaced by the order of its first appearance."""
    text, seen = json.dumps(doc, sort_keys=True), {}
    return UUID.sub(lambda found: seen.setdefault(found.group(0), f"id-{len(seen)}"), text)


FAN = """
name: wide
start: fan
nodes:
  fan: {kind: foreach, items: "input.items", body: work, join: all}
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, next: all}
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def test_a_fan_out_is_admitted_in_one_transaction_per_message(engine):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(FAN),
                  batched=True)
    run_id = submit(fleet, "wide", {"items": list(range(BATCH_MAX + 5))})
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))
    pending = [d for d in fleet.publisher.pending() if d.task == TASK_EXECUTE]
    assert len(pending) == 2  # BATCH_MAX + 5 assignments: two messages
    fleet.drain()
    executes = [t for t in fleet.trace if t[0] == TASK_EXECUTE]
    assert len(executes) == BATCH_MAX + 5 and {o for _, _, o in executes} == {"dispatched"}
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
    assert_ledger_held(engine, expect_runs=1)


def test_a_batch_that_fails_leaves_every_row_as_it_was_and_is_taken_again(engine, monkeypatch):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(FAN),
                  batched=True)
    run_id = submit(fleet, "wide", {"items": [1, 2, 3]})
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))
    batch = take(fleet, lambda d: d.task == TASK_EXECUTE)
    ids = fleet.publisher.batch_of[id(batch)]
    admit, calls = fleet.dispatcher._admit, []

    def dies_on_the_third(conn, row, now, deliveries):
        calls.append(row.id)
        if len(calls) == 3:
            raise KeyboardInterrupt("the dispatcher is killed mid-batch")
        return admit(conn, row, now, deliveries)

    monkeypatch.setattr(fleet.dispatcher, "_admit", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        fleet.dispatcher.handle_batch(ids)
    with engine.connect() as conn:
        statuses = {r.status for r in conn.execute(select(m.c.status).where(m.c.id.in_(ids)))}
    assert statuses == {ledger.QUEUED}  # the first two admissions rolled back with the third
    assert not [d for d in fleet.publisher.pending() if d.task == TASK_WORK]  # and nothing was sent
    monkeypatch.undo()
    assert fleet.dispatcher.handle_batch(ids) == ["dispatched"] * 3  # the broker's redelivery
    assert fleet.dispatcher.handle_batch(ids) == ["duplicate"] * 3  # and a duplicate of it
    fleet.drain()
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
    assert_ledger_held(engine, expect_runs=1)


def test_the_publisher_batches_only_admissions_due_now_on_one_queue():
    sent = [Delivery(TASK_EXECUTE, "x.0", "a"), Delivery(TASK_WORK, "w", "b"), Delivery(TASK_EXECUTE, "x.0", "c"),
            Delivery(TASK_EXECUTE, "x.1", "d"), Delivery(TASK_EXECUTE, "x.0", "e", countdown_s=2.0),
            Delivery(TASK_DECIDE, "o.0", "f"), Delivery(TASK_DECIDE, "o.0", "g"), Delivery(TASK_WORK, "w", "h")]
    grouped = [(d.task, d.queue, ids) for d, ids in messages(sent)]
    assert grouped == [(TASK_EXECUTE, "x.0", ["a", "c"]), (TASK_WORK, "w", ["b"]), (TASK_EXECUTE, "x.1", ["d"]),
                       (TASK_EXECUTE, "x.0", ["e"]), (TASK_DECIDE, "o.0", ["f"]), (TASK_DECIDE, "o.0", ["g"]),
                       (TASK_WORK, "w", ["h"])]
    many = messages([Delivery(TASK_EXECUTE, "x.0", str(i)) for i in range(2 * BATCH_MAX + 1)])
    assert [len(ids) for _, ids in many] == [BATCH_MAX, BATCH_MAX, 1]


def test_the_reclaimer_counts_a_batched_message_for_the_rows_it_carries(engine):
    from bus.reclaimer import Reclaimer

    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(FAN),
                  batched=True)
    submit(fleet, "wide", {"items": list(range(BATCH_MAX + 5))})
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))  # the fan-out: 2 messages hold 105 rows
    fleet.clock.now += fleet.settings.stale_s + 1  # nobody has taken them yet: a consumer merely behind
    depth = {"value": 2}
    reclaimer = Reclaimer(engine=engine, publisher=fleet.publisher, settings=fleet.settings,
                          depth=lambda _queue: depth["value"], clock=fleet.clock)
    assert reclaimer.sweep().resent == 0 and reclaimer.sweep().resent == 0
    depth["value"] = 0  # the broker lost them: two sweeps in a row judge every row lost and send it again
    assert reclaimer.sweep().resent == 0 and reclaimer.sweep().resent == BATCH_MAX + 5
    fleet.drain()
    assert_ledger_held(engine, expect_runs=1)


BUDGETED = FAN.replace("name: wide\n", "name: wide-budgeted\nbudget: {maxCostUsd: 10000.0, maxTokens: 100000000}\n")


def test_a_batch_reads_the_budgets_above_it_once(engine, monkeypatch):
    from coordinator import budgets

    reads, snapshots = [], budgets.snapshots
    monkeypatch.setattr(budgets, "snapshots", lambda conn, above: reads.append(above) or snapshots(conn, above))
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(BUDGETED),
                  batched=True)
    run_id = submit(fleet, "wide-budgeted", {"items": list(range(BATCH_MAX + 5))})
    fleet.drain()
    assert len(reads) == 2  # two messages, not 105 admissions, read the root's counters and ended holds
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
    assert_ledger_held(engine, expect_runs=1)
