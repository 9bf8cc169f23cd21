"""``coordinator/live.py`` on both ledgers: what a live view is told past a position — one tenant's, in bounded reads
that move past every row, read in full only when the principal may see it; approvals and run statuses told once,
a child run's status on its parent's view; and, on PostgreSQL, an event whose id commits late told exactly once."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, func, select, text

from bus.cursor import Position
from bus.introspection import IntrospectionEvent, write
from bus.schema import introspection_events as ie
from coordinator import live
from coordinator.commands import decide_approval
from coordinator.schema import approvals, runs
from tests.support.api import ASK
from tests.support.harness import Fleet, registry_of, settle, submit

PARENT = """
name: parent
start: child
nodes:
  child: {kind: subworkflow, workflow: ask, next: done}
  done: {kind: end}
"""


def _read_all(engine, *, tenant, at=None, run_id=None, limit=live.READ_LIMIT, seen=None, now=None):
    """Every batch from ``at`` until a read finds nothing more (``now``: the harness's clock, which wrote the rows)."""
    seen = seen or live.Seen()
    at = at or Position()
    batches = []
    with engine.connect() as conn:
        while True:
            batch = live.read_changes(conn, at, tenant=tenant, run_id=run_id, seen=seen,
                                     now=now or time.time(), limit=limit)
            if not batch.changes and batch.position == at:
                return batches
            batches.append(batch)
            at = batch.position


def _changes(batches):
    return [c for b in batches for c in b.changes]


def test_a_tenant_is_told_only_its_own_runs_in_bounded_reads_that_skip_the_others(engine):
    fleet = Fleet(engine, {}, registry=registry_of(ASK))
    theirs = submit(fleet, "ask", tenant="zeta")
    mine = submit(fleet, "ask", tenant="acme")
    settle(fleet)
    with engine.connect() as conn:
        newest = live.latest_id(conn)
    batches = _read_all(engine, tenant="acme", limit=3)
    assert batches[-1].position.high_id == newest  # the position passed every row, the other tenant's too
    assert all(len([c for c in b.changes if c.kind == "trace"]) <= 3 for b in batches)
    assert any(b.full for b in batches[:-1])
    changes = _changes(batches)
    assert {c.data["run_id"] for c in changes} == {mine}
    assert [c.data["status"] for c in changes if c.kind == "run"] == ["waiting"]  # told once, not per batch
    [asked] = [c for c in changes if c.kind == "approval"]
    assert (asked.data["change"], asked.data["node_id"], asked.data["event_id"]) == \
        ("requested", "gate", asked.event_id)
    ids = [c.event_id for c in changes if c.kind == "trace"]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) and asked.event_id in ids
    assert all(not c.data["type"].startswith("sql.") for c in changes if c.kind == "trace")
    every = _changes(_read_all(engine, tenant=None))
    assert {c.data["run_id"] for c in every} == {mine, theirs}
    assert _read_all(engine, tenant="acme", at=Position(newest)) == []


def test_only_the_rows_a_principal_may_see_are_read_in_full(engine):
    """The filters are in SQL: a read never fetches another tenant's events' data, nor the SQL trace's."""
    fleet = Fleet(engine, {}, registry=registry_of(ASK))
    submit(fleet, "ask", tenant="zeta")
    mine = submit(fleet, "ask", tenant="acme")
    settle(fleet)
    with engine.begin() as conn:  # what a step's SQL trace writes when it is on
        write(conn, [IntrospectionEvent("sql.query", mine, {"statement": "SELECT 1"})], now=fleet.clock())
    full_reads = []

    def record(_conn, _cursor, statement, parameters, _context, _many):
        if "introspection_events.data" in statement:
            full_reads.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert _read_all(engine, tenant="acme")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert full_reads
    with engine.connect() as conn:
        for statement, parameters in full_reads:  # what each of those reads fetched, read again
            found = conn.exec_driver_sql(statement, parameters).all()
            assert found and {r.run_id for r in found} == {mine}
            assert all(r.category != "sql" for r in found)
        assert conn.execute(select(runs.c.id).where(runs.c.tenant == "zeta")).first()


def test_one_runs_changes_resume_after_a_position_and_tell_its_approval_resolved(engine):
    fleet = Fleet(engine, {}, registry=registry_of(ASK))
    run_id = submit(fleet, "ask", tenant="acme")
    settle(fleet)
    seen = live.Seen()
    first = _read_all(engine, tenant="acme", run_id=run_id, seen=seen)
    at = first[-1].position
    with engine.begin() as conn:
        approval = conn.execute(select(approvals.c.id).where(approvals.c.run_id == run_id)).scalar_one()
        _row, delivery = decide_approval(conn, approval, approved=True, by="key:test", comment="", now=fleet.clock(),
                                         shards=1)
    fleet.publisher.send([delivery])
    settle(fleet)
    later = _changes(_read_all(engine, tenant="acme", run_id=run_id, at=at, seen=seen))
    assert all(c.event_id is None or c.event_id > at.high_id for c in later)
    assert [(c.data["change"], c.data["status"]) for c in later if c.kind == "approval"] == [("resolved", "approved")]
    assert [c.data["status"] for c in later if c.kind == "run"] == ["completed"]


def test_a_child_runs_status_is_told_on_its_parents_view_but_not_its_events(engine):
    fleet = Fleet(engine, {}, registry=registry_of(ASK, PARENT))
    parent = submit(fleet, "parent", tenant="acme")
    settle(fleet)
    with engine.connect() as conn:
        child = conn.execute(select(runs.c.id).where(runs.c.parent_run_id == parent)).scalar_one()
    other = submit(fleet, "ask", tenant="zeta")  # written after them: a run's stream never walks its events
    settle(fleet)
    batches = _read_all(engine, tenant="acme", run_id=parent, limit=2)
    changes = _changes(batches)
    told = {(c.data["run_id"], c.data["status"]) for c in changes if c.kind == "run"}
    assert (child, "waiting") in told and (parent, "waiting") in told
    assert {c.data["run_id"] for c in changes if c.kind in ("trace", "approval")} == {parent}
    with engine.connect() as conn:
        family = conn.execute(select(func.max(ie.c.id)).where(ie.c.run_id.in_([parent, child]))).scalar_one()
        assert conn.execute(select(func.min(ie.c.id)).where(ie.c.run_id == other)).scalar_one() > family
    assert batches[-1].position.high_id == family
    assert _changes(_read_all(engine, tenant="zeta", run_id=parent)) == []  # the caller checks the run; still


def test_a_stream_starts_past_what_is_committed_and_a_mark_past_the_newest_is_clamped(engine):
    fleet = Fleet(engine, {}, registry=registry_of(ASK))
    run_id = submit(fleet, "ask", tenant="acme")
    settle(fleet)
    with engine.connect() as conn:
        newest = live.latest_id(conn)
        placed = live.start(conn, now=fleet.clock())
        assert placed.high_id == newest
        assert live.resume(conn, 2**63 - 1) == Position(newest)
        assert live.resume(conn, 3) == Position(3)
    assert _changes(_read_all(engine, tenant="acme", at=placed, now=fleet.clock())) == []
    later = submit(fleet, "ask", tenant="acme")
    settle(fleet)
    told = _changes(_read_all(engine, tenant="acme", at=placed, now=fleet.clock()))
    assert {c.data["run_id"] for c in told} == {later} != {run_id}


def test_a_long_events_data_is_left_out_and_the_statuses_told_are_bounded():
    seen = live.Seen(limit=2)
    assert seen.changed("a", "running") and not seen.changed("a", "running") and seen.changed("a", "waiting")
    seen.changed("b", "x")
    seen.changed("c", "x")
    assert seen.changed("a", "waiting")  # forgotten: the oldest past the limit
    row = type("Row", (), {"id": 1, "run_id": "r", "category": "operation", "type": "operation.context.set",
                           "node_id": None, "token_id": None, "created_at": 1.0, "data": {"blob": "x" * 5000}})
    event_ = live._event(row)
    assert (event_["data"], event_["data_cut"]) == (None, True)


def _marker(run_id: str, name: str) -> IntrospectionEvent:
    return IntrospectionEvent(f"operation.test.{name}", run_id, {"name": name})


@pytest.mark.parametrize("ledger_url", ["postgres"], indirect=True)
def test_an_event_whose_id_commits_late_is_told_once_and_a_resume_brings_it_back(engine):
    """PostgreSQL takes an id at insert and shows the row at commit: the lower id may be seen last."""
    fleet = Fleet(engine, {}, registry=registry_of(ASK))
    run_id = submit(fleet, "ask", tenant="acme")
    settle(fleet)
    seen = live.Seen()
    now = fleet.clock()
    with engine.connect() as conn:
        at = live.start(conn, now=now)
    slow = engine.connect()
    try:
        slow_tx = slow.begin()
        write(slow, [_marker(run_id, "slow")], now=now)  # takes the lower id, commits last
        low_id = slow.execute(text("SELECT max(id) FROM introspection_events")).scalar_one()
        with engine.begin() as quick:
            write(quick, [_marker(run_id, "quick")], now=now)
        before = _read_all(engine, tenant="acme", at=at, seen=seen, now=now)
        told = [c for c in _changes(before) if c.kind == "trace"]
        assert [c.data["type"] for c in told] == ["operation.test.quick"] and told[0].event_id > low_id
        mark = before[-1].resume_id(told[0])
        assert mark < low_id  # what a client resumes from: below the id still open
        slow_tx.commit()
    finally:
        slow.close()
    after = _read_all(engine, tenant="acme", at=before[-1].position, seen=seen, now=now)
    assert [(c.data["type"], c.event_id) for c in _changes(after) if c.kind == "trace"] == \
        [("operation.test.slow", low_id)]
    assert after[-1].position.low_id >= told[0].event_id  # no hole left: the mark passed both
    resumed = _changes(_read_all(engine, tenant="acme", at=Position(mark), now=now))
    assert {c.event_id for c in resumed if c.kind == "trace"} >= {low_id, told[0].event_id}
