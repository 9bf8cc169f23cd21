"""The brain under load: when a decide row waited in its queue, its transaction applies the shard's other due
rows too (the Celery message is the doorbell, the ledger the queue); their own messages, when they come, find
them applied without a statement. Results are those of one at a time; an event that fails inside a batch rolls
back alone and is then handled on its own, as one at a time would handle it."""

from __future__ import annotations

from sqlalchemy import event, select

from bus import ledger
from bus.celery_app import TASK_DECIDE
from bus.schema import agent_messages as m
from coordinator import brain as brain_module
from coordinator.store import run_view
from tests.support.harness import Fleet, registry_of, submit, take
from tests.support.invariants import assert_ledger_held
from workers.handler import WorkResult

ONE_STEP = """
name: one-step
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {n: input.n}, next: done}
  done: {kind: end}
"""
RUNS = 12


def _fleet(engine, **kw) -> Fleet:
    return Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"n": p["n"]})},
                 registry=registry_of(ONE_STEP), **kw)


def _statements(engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a, **_: seen.append(a[2]))
    return seen


def test_a_row_that_waited_brings_the_shards_other_due_rows_into_its_transaction(engine):
    fleet = _fleet(engine, brain_batch_after_s=0.0)
    run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(RUNS)]
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(conn))
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE)) == "applied"
    assert len(commits) == 1  # every start event in one transaction
    with engine.connect() as conn:
        queued = conn.execute(select(m.c.id).where(m.c.run_id.in_(run_ids), m.c.kind == "start",
                                                   m.c.status == ledger.QUEUED)).all()
    assert queued == []
    statements = _statements(engine)
    later = [take(fleet, lambda d: d.task == TASK_DECIDE) for _ in range(RUNS - 1)]
    assert [fleet.deliver(d) for d in later] == ["duplicate"] * (RUNS - 1)
    assert statements == []  # their messages found them applied in this process: no read, no write
    fleet.drain()
    with engine.connect() as conn:
        assert [run_view(conn, r)["output"] for r in run_ids] == [{"work": {"n": n}} for n in range(RUNS)]
    assert_ledger_held(engine, expect_runs=RUNS)


def test_an_idle_brain_takes_only_the_row_it_was_sent(engine):
    fleet = _fleet(engine)  # the harness's default: no row waited long enough to batch
    fleet.brain.batch_after_s = brain_module.BATCH_AFTER_S
    run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(3)]
    statements = _statements(engine)
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE)) == "applied"
    assert not [s for s in statements if "FOR UPDATE" in s or "ORDER BY" in s]  # it never looked for more
    with engine.connect() as conn:
        left = conn.execute(select(m.c.id).where(m.c.run_id.in_(run_ids), m.c.kind == "start",
                                                 m.c.status == ledger.QUEUED)).all()
    assert len(left) == 2


def test_a_batch_gives_the_results_of_one_at_a_time(engine):
    outputs = []
    for after in (None, 0.0):
        fleet = _fleet(engine, brain_batch_after_s=after)
        run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(RUNS)]
        fleet.drain()
        with engine.connect() as conn:
            outputs.append([(run_view(conn, r)["status"], run_view(conn, r)["output"]) for r in run_ids])
        assert_ledger_held(engine, roots=run_ids)
    assert outputs[0] == outputs[1]


def test_an_event_that_fails_in_a_batch_rolls_back_alone_and_is_then_handled_on_its_own(engine, monkeypatch):
    fleet = _fleet(engine, brain_batch_after_s=0.0)
    run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(RUNS)]
    poisoned = run_ids[5]
    real_plan = brain_module.plan

    def plan(state, ev, *, now):
        if state.run.id == poisoned:
            raise RuntimeError("a planner bug on this one run")
        return real_plan(state, ev, now=now)

    monkeypatch.setattr(brain_module, "plan", plan)
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE)) == "applied"
    with engine.connect() as conn:
        rows = {r.run_id: r for r in conn.execute(select(m.c.run_id, m.c.status, m.c.attempts)
                                                  .where(m.c.run_id.in_(run_ids), m.c.kind == "start"))}
    assert {r.status for k, r in rows.items() if k != poisoned} == {ledger.DONE}  # the others stayed applied
    # Its take rolled back alone, and its crash was counted at once, as if it had come alone.
    assert (rows[poisoned].status, rows[poisoned].attempts) == (ledger.QUEUED, 1)
    again = submit(fleet, "one-step", {"n": RUNS})
    assert fleet.deliver(take(fleet, lambda d: d.message_id == _start_of(engine, again))) == "applied"
    with engine.connect() as conn:
        attempts = conn.execute(select(m.c.attempts).where(m.c.run_id == poisoned, m.c.kind == "start")).scalar_one()
    assert attempts == 1  # a crashed row is left out of later batches: only its own messages bring it
    monkeypatch.undo()
    run_ids.append(again)
    fleet.drain()  # its own message applies it now
    with engine.connect() as conn:
        assert {run_view(conn, r)["status"] for r in run_ids} == {"completed"}
    assert_ledger_held(engine, expect_runs=len(run_ids))


def _start_of(engine, run_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(m.c.id).where(m.c.run_id == run_id, m.c.kind == "start")).scalar_one()


def test_a_crash_of_the_event_a_message_names_is_counted_and_takes_no_other_with_it(engine, monkeypatch):
    fleet = _fleet(engine, brain_batch_after_s=0.0)
    run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(3)]
    first = take(fleet, lambda d: d.task == TASK_DECIDE)
    real_plan = brain_module.plan
    monkeypatch.setattr(brain_module, "plan", lambda state, ev, *, now: (
        (_ for _ in ()).throw(RuntimeError("boom")) if state.run.id == run_ids[0] else real_plan(state, ev, now=now)))
    assert fleet.deliver(first) == "crashed"
    with engine.connect() as conn:
        starts = {r.run_id: (r.status, r.attempts) for r in conn.execute(
            select(m.c.run_id, m.c.status, m.c.attempts).where(m.c.run_id.in_(run_ids), m.c.kind == "start"))}
    # Its crash counted; the rows its transaction had taken rolled back with it, still queued for their messages.
    assert starts == {run_ids[0]: (ledger.QUEUED, 1), run_ids[1]: (ledger.QUEUED, 0), run_ids[2]: (ledger.QUEUED, 0)}
    monkeypatch.undo()
    fleet.drain()
    with engine.connect() as conn:
        assert [run_view(conn, r)["status"] for r in run_ids[1:]] == ["completed", "completed"]


WAITS = """
name: waits
start: pause
nodes:
  pause: {kind: wait, duration_ms: 30000, next: done}
  done: {kind: end}
"""


def test_a_batch_never_takes_an_event_before_it_is_due(engine):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"n": p["n"]})},
                  registry=registry_of(ONE_STEP, WAITS), brain_batch_after_s=0.0)
    waiting = submit(fleet, "waits")
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))  # its start: a timer row due in 30 s
    other = submit(fleet, "one-step", {"n": 1})
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE)) == "applied"
    with engine.connect() as conn:
        timer = conn.execute(select(m.c.status).where(m.c.run_id == waiting, m.c.kind == "timer")).scalar_one()
    assert timer == ledger.QUEUED
    fleet.drain()
    with engine.connect() as conn:
        assert [run_view(conn, r)["status"] for r in (waiting, other)] == ["completed", "completed"]


def test_events_of_one_run_in_one_batch_each_get_their_own_run_version(engine):
    from coordinator import commands

    fleet = _fleet(engine, brain_batch_after_s=0.0)
    run_id = submit(fleet, "one-step", {"n": 1})
    with engine.begin() as conn:
        for name in ("a", "b"):
            fleet.publisher.send([commands.signal(conn, run_id, name, {}, now=fleet.clock(), shards=1)])
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE)) == "applied"
    with engine.connect() as conn:
        versions = sorted(conn.execute(select(m.c.run_version).where(m.c.run_id == run_id, m.c.kind.in_(
            ("start", "signal")))).scalars())
        assert versions == [1, 2, 3] and run_view(conn, run_id)["version"] == 3


def test_a_version_conflict_in_a_batch_is_left_to_the_events_own_message(engine, monkeypatch):
    from bus.errors import Conflict
    from coordinator.apply import Phase1

    fleet = _fleet(engine, brain_batch_after_s=0.0)
    run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(3)]
    real_apply = Phase1.apply

    def apply(self, plan):
        if self.run.id == run_ids[1]:
            raise Conflict("another brain moved this run")
        return real_apply(self, plan)

    monkeypatch.setattr(Phase1, "apply", apply)
    assert fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE)) == "applied"
    with engine.connect() as conn:
        row = conn.execute(select(m.c.status, m.c.attempts).where(m.c.run_id == run_ids[1],
                                                                    m.c.kind == "start")).one()
    assert (row.status, row.attempts) == (ledger.QUEUED, 0)  # not a crash: its own message plans it again
    monkeypatch.undo()
    fleet.drain()
    with engine.connect() as conn:
        assert {run_view(conn, r)["status"] for r in run_ids} == {"completed"}


def test_each_events_admissions_are_sent_on_their_own(engine):
    fleet = _fleet(engine, batched=True, brain_batch_after_s=0.0)
    run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(RUNS)]
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))  # every start event in one transaction
    assert not fleet.publisher.batch_of  # one admission message per step: none mixes two run trees
    fleet.drain()
    assert_ledger_held(engine, expect_runs=len(run_ids))


def test_with_sql_events_a_brain_applies_one_event_per_transaction(engine):
    fleet = _fleet(engine, brain_batch_after_s=0.0)
    fleet.brain.sql_events = True
    run_ids = [submit(fleet, "one-step", {"n": n}) for n in range(3)]
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))
    with engine.connect() as conn:
        left = conn.execute(select(m.c.id).where(m.c.run_id.in_(run_ids), m.c.kind == "start",
                                                 m.c.status == ledger.QUEUED)).all()
    assert len(left) == 2
