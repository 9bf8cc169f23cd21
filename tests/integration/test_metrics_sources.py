"""What the counters are folded from, written where it happens (so the fold needs no pairing and no join): the
dispatcher stamps ``dispatched_at`` as it admits, the worker's closing row reports its route, model, end, queue
wait and run time, the brain audits every event it applied — one statement per transaction, however many events
it took, a root run's start marked as the ingress — and the reclaimer's lost attempts and dead letters say their
route and end. A dead letter held has not ended: it ends when it is discarded, or as its re-queued attempts do."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select

from bus import ledger
from bus.celery_app import TASK_DECIDE, TASK_WORK
from bus.schema import agent_messages as m
from bus.schema import bus_events
from coordinator import dead_letters
from coordinator.schema import runs
from tests.integration.test_budget_tree import CHILD
from tests.integration.test_dead_letters import FRAGILE, Fragile
from tests.integration.test_metrics import APPLY_S, RUN_S, WAIT_S, Known, known, one, scrape
from tests.support.harness import Fleet, registry_of, run_row, submit, take
from workers.handler import WorkResult


def audit(engine, run_id: str, kind: str) -> list:
    with engine.connect() as conn:
        return conn.execute(select(bus_events).where(bus_events.c.run_id == run_id, bus_events.c.kind == kind)
                            .order_by(bus_events.c.id)).all()


def test_the_worker_reports_its_route_model_end_wait_and_run_on_the_row_that_closes_an_attempt(engine):
    k = known(engine)
    done = audit(engine, k.runs["ok"], "execute_done")
    assert [r.detail for r in done] == [{"route": "t.work", "model": "gpt-x", "usage": {"tokens": 10, "cost_usd": 0.01},
                                         "end": "done", "run_s": pytest.approx(RUN_S),
                                         "wait_s": pytest.approx(WAIT_S)}]
    flaky = [(r.kind, r.attempt, r.detail.get("end")) for r in audit(engine, k.runs["flaky"], "execute_failed")
             + audit(engine, k.runs["flaky"], "execute_retry")]
    assert flaky == [("execute_failed", 1, None), ("execute_retry", 1, "retry")]  # the retry row closes attempt 1
    failed = audit(engine, k.runs["broken"], "execute_failed")
    assert [(r.detail["code"], r.detail["end"]) for r in failed] == [("work.failed", "failed")]
    denied = audit(engine, k.runs["banned"], "policy_denied")
    assert [(r.detail["code"], r.detail["route"], r.detail["end"]) for r in denied] == \
        [("policy.model_denied", "t.work", "denied")]
    with engine.connect() as conn:
        stamps = conn.execute(select(m.c.dispatched_at, m.c.updated_at).where(
            m.c.run_id == k.runs["ok"], m.c.kind == "assignment")).one()
    assert stamps.dispatched_at is not None and stamps.dispatched_at < stamps.updated_at


ONE_STEP = """
name: one-step
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, next: done}
  done: {kind: end}
"""


def test_the_brain_audits_every_event_it_applied_in_one_statement_per_transaction(engine):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(ONE_STEP),
                  brain_batch_after_s=0.0)
    run_ids = [submit(fleet, "one-step") for _ in range(12)]
    inserts: list[int] = []

    def count(_conn, _cursor, statement, parameters, _context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO BUS_EVENTS"):
            inserts.append(len(parameters) if executemany else 1)

    fleet.clock.now += APPLY_S
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE)) == "applied"
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(inserts) == 1  # twelve start events applied in one transaction, audited in one statement
    rows = applied(engine, run_ids)
    assert len(rows) == 12 and {r.run_id for r in rows} == {None}  # the metrics' feed, not the runs' audit
    assert {r.detail["event"] for r in rows} == {"start"} and {r.detail["root"] for r in rows} == {True}
    assert [r.detail["latency_s"] for r in rows] == pytest.approx([APPLY_S] * 12)
    fleet.drain()
    rows = applied(engine, run_ids[:1])
    assert [r.detail["event"] for r in rows] == ["start", "task_completed"]
    assert "settled" not in rows[-1].detail  # its assignment spent nothing
    assert audit(engine, run_ids[0], "event_applied") == []


def applied(engine, run_ids: list[str]) -> list:
    """The ``event_applied`` rows of the decide rows of ``run_ids``."""
    with engine.connect() as conn:
        decide = select(m.c.id).where(m.c.run_id.in_(run_ids))
        return conn.execute(select(bus_events).where(bus_events.c.kind == "event_applied",
                                                     bus_events.c.message_id.in_(decide))
                            .order_by(bus_events.c.id)).all()


LOST = """
name: lost
start: work
nodes:
  work:
    kind: task
    route: {service: t, role: work}
    agent: {agent_id: w}
    retry: {maximum_attempts: 2, initial_interval_ms: 10, dead_letter: true}
    next: done
  done: {kind: end}
"""


def test_attempts_lost_with_their_worker_are_counted_from_the_reclaimers_rows(engine):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(LOST))
    run_id = submit(fleet, "lost")

    def vanish(delivery) -> bool:  # a worker takes the assignment and dies with it
        if delivery.task != TASK_WORK:
            return False
        with engine.begin() as conn:
            claimed = ledger.claim(conn, delivery.message_id, lease_s=fleet.settings.lease_s, now=fleet.clock())
        assert claimed is not None
        return True

    for _ in range(2):
        fleet.drain(skip=vanish)
        fleet.clock.now += fleet.settings.lease_s + 1
        fleet.reclaimer.sweep()
    fleet.drain(skip=vanish)
    kinds = [(r.kind, r.detail.get("end"), r.detail.get("route")) for r in audit(engine, run_id, "lease_expired")
             + audit(engine, run_id, "execute_dead") + audit(engine, run_id, "dead_letter_held")]
    assert kinds == [("lease_expired", "retry", "t.work"), ("lease_expired", None, None),
                     ("execute_dead", "held", "t.work"), ("dead_letter_held", None, "t.work")]
    found = scrape(Known(fleet, {}))
    assert one(found, "cogo_retries_total", route="t.work") == 1
    assert one(found, "cogo_assignments_total", route="t.work", outcome="dead") == 0  # held: its run waits
    assert one(found, "cogo_dead_letters_total", route="t.work") == 1
    assert found.get("cogo_queue_wait_seconds_count", {}) == {}  # a lost attempt's times are not known
    discard(fleet, run_id)
    found = scrape(Known(fleet, {}))
    assert one(found, "cogo_assignments_total", route="t.work", outcome="dead") == 1  # discarded: it ended


def discard(fleet: Fleet, run_id: str) -> None:
    """Discard the held dead letter of ``run_id`` as an operator does, and let its run go on."""
    with fleet.engine.begin() as conn:
        letter = conn.execute(select(m.c.id).where(m.c.run_id == run_id, m.c.kind == "assignment")).scalar_one()
        acted = dead_letters.discard(conn, letter, by=dead_letters.Actor("operator", "ops"), tenant=None,
                                     now=fleet.clock())
    fleet.publisher.send(acted.deliveries)
    fleet.drain()


@pytest.mark.parametrize("action", ["requeue", "discard"])
def test_a_dead_letter_held_has_not_ended_and_ends_once(engine, action):
    """Held, an assignment has not ended (its run waits for it): it counts a dead letter, no outcome. Re-queued, it
    ends as its new attempts do (done, once); discarded, it ends dead (once)."""
    handler = Fragile()
    fleet = Fleet(engine, {("t", "fragile"): handler}, registry=registry_of(FRAGILE))
    run_id = submit(fleet, "fragile")
    fleet.drain()
    found = scrape(Known(fleet, {}))
    route = {"route": "t.fragile"}
    assert one(found, "cogo_dead_letters_total", **route) == 1
    assert one(found, "cogo_retries_total", **route) == 2
    assert {k: v for k, v in found.get("cogo_assignments_total", {}).items() if v} == {}  # nothing ended yet
    assert one(found, "cogo_assignment_duration_seconds_count", **route) == 3  # three attempts did end
    if action == "requeue":
        handler.fixed = True
        with engine.begin() as conn:
            letter = conn.execute(select(m.c.id).where(m.c.run_id == run_id, m.c.kind == "assignment")).scalar_one()
            acted = dead_letters.requeue(conn, letter, by=dead_letters.Actor("operator", "ops"), tenant=None,
                                         now=fleet.clock())
        fleet.publisher.send(acted.deliveries)
        fleet.drain()
    else:
        discard(fleet, run_id)
    assert run_row(fleet, run_id)["status"] == ("completed" if action == "requeue" else "failed")
    found = scrape(Known(fleet, {}))
    ended = {labels: v for labels, v in found["cogo_assignments_total"].items() if v}
    outcome = "done" if action == "requeue" else "dead"
    assert ended == {(("outcome", outcome), ("route", "t.fragile")): 1}
    assert one(found, "cogo_dead_letters_total", **route) == 1
    assert one(found, "cogo_assignments_first_attempt_done_total", **route) == 0  # done at its fourth attempt


PARENT = """
name: parent-of-one
start: kid
nodes:
  kid: {kind: subworkflow, workflow: child-work, next: done}
  done: {kind: end}
"""


def test_the_ingress_latency_counts_the_runs_the_api_started_not_their_children(engine):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(CHILD, PARENT))
    parent = submit(fleet, "parent-of-one")
    fleet.drain()
    assert run_row(fleet, parent)["status"] == "completed"
    found = scrape(Known(fleet, {}))
    assert one(found, "cogo_step_latency_seconds_count", event="start") == 2  # the parent's start and its child's
    assert one(found, "cogo_ingress_latency_seconds_count") == 1  # only the parent came through the API
    with engine.connect() as conn:
        child = conn.execute(select(runs.c.id).where(runs.c.parent_run_id == parent)).scalar_one()
    for run_id, root in ((parent, True), (child, False)):
        assert [r.detail.get("root") for r in applied(engine, [run_id]) if r.detail["event"] == "start"] == [root]
