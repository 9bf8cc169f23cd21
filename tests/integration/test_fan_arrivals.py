"""A join's arrivals are rows (``fan_arrivals``) and a count on the fan-in: an arrival reads whether its own branch
arrived and writes its own row, whatever the fan-out's width; only the arrival that fires reads them all."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import event, func, select, text, update

from bus import introspection
from bus.celery_app import TASK_EXECUTE
from coordinator import brain, commands
from coordinator.explain import explain
from coordinator.schema import fan_arrivals, fan_ins, runs, tokens
from coordinator.store import load_state
from tests.integration.test_patterns_fanout import FOREACH as PATTERNS_FOREACH
from tests.support.harness import Fleet, events, registry_of, run_row, submit, types
from tests.support.invariants import assert_ledger_held
from workers.handler import WorkResult

FOREACH = PATTERNS_FOREACH.replace('output: {doubled: "context.results[].out.doubled"}',
                                   'output: {n: "length(context.results)"}')
"""The pattern tests' ``foreach`` + join, ending with how many results the join merged."""


def fleet_of(engine) -> Fleet:
    return Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"x": p["x"]})},
                 registry=registry_of(FOREACH))


def arrivals_at(engine, monkeypatch, width: int) -> tuple[list[tuple], list[int]]:
    """Run a ``width``-way fan-out with the brain's statements recorded: the statements (kind, table, rows as the
    driver reports them) of each arrival that did not fire the join, and on PostgreSQL the rows of the token and
    fan tables each event's own load read (``load_state(focus=…)``; its per-transaction counters)."""
    fleet = fleet_of(engine)
    fleet.brain.sql_events = True  # a step's sql.* events close its trace: they split the trace into steps
    loads: list[int] | None = None
    if engine.dialect.name == "postgresql":
        loads = []

        def counted(conn, run_id, registry, *, focus=None):
            before = _rows_read(conn)
            state = load_state(conn, run_id, registry, focus=focus)
            if focus is not None:
                loads.append(_rows_read(conn) - before)
            return state
        monkeypatch.setattr(brain, "load_state", counted)
    run_id = submit(fleet, "each", {"items": list(range(width))})
    fleet.deliver(fleet.publisher.pop()[1])  # the fan-out
    if loads is not None:  # plan as on a ledger with statistics (by primary key, not by a scan of the run's rows)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    fleet.drain()
    monkeypatch.undo()
    assert run_row(fleet, run_id)["output"] == {"n": width}
    with engine.connect() as conn:
        trace = introspection.read(conn, run_id, limit=1_000_000)
    steps, step, in_sql = [], [], False
    for e in trace:
        if in_sql and e["category"] != "sql":
            steps.append(step)
            step = []
        in_sql = e["category"] == "sql"
        step.append(e)
    steps.append(step)
    arrivals = [s for s in steps if any(e["type"] == "operation.fan_in.arrive" for e in s)
                and not any(e["type"] == "operation.fan_in.fire" for e in s)]
    assert len(arrivals) == width - 1
    return [tuple((e["type"], e["data"]["table"], e["data"]["rows"]) for e in s if e["category"] == "sql")
            for s in arrivals], loads or []


def _rows_read(conn) -> int:
    return int(conn.execute(text(
        "SELECT coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0) FROM pg_stat_xact_user_tables "
        "WHERE relname IN ('tokens', 'fan_ins', 'fan_arrivals', 'branch_scopes') "
        "AND schemaname = current_schema()")).scalar())


def test_an_arrival_costs_the_same_at_1000_branches_as_at_10(engine, monkeypatch):
    if engine.dialect.name == "postgresql":
        # Plans as on a ledger of real size: these test tables are so small that a sequential scan would be
        # cheapest, and would count every row whatever the statement needs.
        engine.dispose()
        event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("SET enable_seqscan = off"))
    narrow, narrow_reads = arrivals_at(engine, monkeypatch, 10)
    wide, wide_reads = arrivals_at(engine, monkeypatch, 1000)
    assert len(set(narrow)) == 1, "every arrival at a 10-way join runs the same statements"
    # Rows are what the driver reports (PostgreSQL counts a select's rows; SQLite does not say).
    assert set(wide) == set(narrow), "an arrival at a 1,000-way join reads and writes what one at a 10-way join does"
    [shape] = set(narrow)
    assert Counter(shape)[("sql.insert", "fan_arrivals", 1)] == 1
    assert not any(table == "fan_arrivals" for kind, table, _ in shape if kind == "sql.select")  # read with its token
    # PostgreSQL: the rows each event's own load read (its token, the fan-in, the scope; the arrival probe).
    assert max(wide_reads, default=0) <= max(narrow_reads, default=0), (narrow_reads, wide_reads[-5:])


def test_arrival_rows_and_count_match_every_branch_once(engine):
    fleet = fleet_of(engine)
    run_id = submit(fleet, "each", {"items": list(range(25))})
    fleet.drain()
    with engine.connect() as conn:
        [fan] = conn.execute(select(fan_ins).where(fan_ins.c.run_id == run_id)).mappings().all()
        rows = conn.execute(select(fan_arrivals.c.branch_index, fan_arrivals.c.token_id)
                            .where(fan_arrivals.c.run_id == run_id)).all()
        joined = dict(conn.execute(select(tokens.c.branch_index, tokens.c.id)
                                   .where(tokens.c.run_id == run_id, tokens.c.node_id == "merge",
                                          tokens.c.fan_id == fan["fan_id"])).all())
    assert fan["fired"] and fan["arrived_count"] == 25
    assert sorted(i for i, _ in rows) == list(range(25))
    assert dict(rows) == joined  # each row names the token that arrived
    assert_ledger_held(engine, expect_runs=1)


def _arrive(fleet: Fleet, run_id: str, branches: set[int]) -> None:
    """Let only ``branches`` reach the join (the other branches' assignments are never delivered)."""
    fleet.deliver(fleet.publisher.pop()[1])  # the start: the fan-out
    with fleet.engine.connect() as conn:
        held = {a for i, a in conn.execute(select(tokens.c.branch_index, tokens.c.assignment_id)
                                           .where(tokens.c.run_id == run_id, tokens.c.node_id == "work"))
                if i not in branches}
    fleet.drain(skip=lambda d: d.task == TASK_EXECUTE and d.message_id in held)


def test_a_branch_arriving_twice_is_a_duplicate_on_the_load_of_its_own_token(engine):
    fleet = fleet_of(engine)
    run_id = submit(fleet, "each", {"items": [0, 1, 2]})
    _arrive(fleet, run_id, {0})
    with engine.begin() as conn:
        arrived = conn.execute(select(tokens).where(tokens.c.run_id == run_id, tokens.c.node_id == "work",
                                                    tokens.c.branch_index == 0)).mappings().one()
        waiting = conn.execute(select(tokens.c.id).where(tokens.c.run_id == run_id, tokens.c.node_id == "work",
                                                         tokens.c.branch_index == 1)).scalar_one()
        # A second token in branch 0 (no definition makes one: the check guards the join all the same).
        conn.execute(tokens.insert().values({**arrived, "id": "work.99", "status": "dispatched",
                                             "assignment_id": "dup", "output": None}))
        conn.execute(update(runs).where(runs.c.id == run_id).values(active_tokens=runs.c.active_tokens + 1))
        again = load_state(conn, run_id, fleet.registry, focus="work.99")
        sibling = load_state(conn, run_id, fleet.registry, focus=waiting)
    [fan] = again.fan_ins.values()
    assert not again.whole and (fan.arrived, fan.count) == ({0}, 1)  # its own branch, not its siblings'
    assert (sibling.fan_ins[fan.fan_id].arrived, sibling.fan_ins[fan.fan_id].count) == (frozenset(), 1)
    with engine.begin() as conn:
        delivery = commands.enqueue_event(conn, run_id=run_id, tenant="acme", kind="task_completed",
                                          payload={"token_id": "work.99", "assignment_id": "dup", "output": {}},
                                          now=fleet.clock(), shard=0)
    fleet.publisher.send([delivery])
    fleet.drain(skip=lambda d: d.task == TASK_EXECUTE)
    [duplicate] = events(fleet, run_id, "decision.sync.duplicate")
    assert duplicate["data"]["branch_index"] == 0
    with engine.connect() as conn:
        count = conn.execute(select(fan_ins.c.arrived_count).where(fan_ins.c.run_id == run_id)).scalar_one()
        rows = conn.execute(select(func.count()).select_from(fan_arrivals)
                            .where(fan_arrivals.c.run_id == run_id)).scalar_one()
    assert (count, rows) == (1, 1)


def test_explain_reads_the_missing_branches_from_the_arrival_rows(engine):
    fleet = fleet_of(engine)
    run_id = submit(fleet, "each", {"items": [0, 1, 2, 3]})
    _arrive(fleet, run_id, {1, 3})
    checks = [e["data"] for e in events(fleet, run_id, "decision.sync.check_condition")]
    assert [(c["arrived"], c["missing_count"]) for c in checks] == [(1, 3), (2, 2)]
    assert not any("missing" in c for c in checks)  # an arrival counts; it does not list its siblings
    with engine.connect() as conn:
        [join] = explain(conn, run_id)["waiting_for"]
    assert (join["arrived"], join["expected"], join["missing_count"]) == (2, 4, 2)
    assert [b["branch_index"] for b in join["missing"]] == [0, 2]
    assert "2 of 4 branches arrived; missing [0, 2]" in join["summary"]


def test_a_cancelled_fan_out_takes_its_arrivals_with_it(engine):
    fleet = fleet_of(engine)
    run_id = submit(fleet, "each", {"items": [0, 1, 2]})
    _arrive(fleet, run_id, {0, 2})
    with engine.begin() as conn:
        delivery = commands.cancel(conn, run_id, reason="enough", now=fleet.clock(), shards=1)
    fleet.publisher.send([delivery])
    fleet.drain()
    assert "operation.fan_in.close" in types(fleet, run_id)
    with engine.connect() as conn:
        left = [conn.execute(select(func.count()).select_from(t).where(t.c.run_id == run_id)).scalar_one()
                for t in (fan_ins, fan_arrivals)]
    assert run_row(fleet, run_id)["status"] == "cancelled" and left == [0, 0]
