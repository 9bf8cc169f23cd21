"""Budget reservations as counters (``coordinator.budgets``): admission under a budget reads the same rows
whatever the tree's width, the counters follow every admission and settlement, a worker's overshoot is
final, and the migration fills the counters in for trees that were under way."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import event, select, text

from bus import ledger
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, TASK_WORK
from bus.errors import BudgetExceeded
from bus.migrate import alembic_config, upgrade
from bus.schema import agent_messages as m
from coordinator import budgets
from coordinator.schema import runs
from coordinator.store import run_view
from tests.support.harness import Fleet, overspent, registry_of, submit, take
from workers.handler import WorkResult

WIDE = """
name: wide-budgeted
start: fan
budget: {maxCostUsd: 1000.0, maxTokens: 10000000}
nodes:
  fan: {kind: foreach, items: "input.items", body: work, join: all}
  work:
    kind: task
    route: {service: rag, role: embed}
    agent: {agent_id: w, budget: {maxCostUsd: 0.5, maxTokens: 100}}
    next: all
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def _tuples_read_per_admission(engine, monkeypatch, width: int) -> list[int]:
    """Rows of ``runs`` and ``agent_messages`` each admission read to check its budgets and to hold its own
    (PostgreSQL's per-backend counters, read inside the admission's transaction around those steps)."""
    read: list[int] = []
    chain, snapshots, reserve = budgets.chain, budgets.snapshots, budgets.reserve
    started: list[int] = []

    def tuples(conn) -> int:
        return int(conn.execute(text(
            "SELECT coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0) "
            "FROM pg_stat_xact_user_tables WHERE relname IN ('runs', 'agent_messages') "
            "AND schemaname = current_schema()")).scalar())

    def starting(conn, run_id, **known):
        started.append(tuples(conn))
        return chain(conn, run_id, **known)

    def checked(conn, found):
        found_snapshots = snapshots(conn, found)
        started[-1] = tuples(conn) - started[-1]  # what the check read (then the row is moved: not counted)
        return found_snapshots

    def reserving(conn, found, budget):
        before = tuples(conn)
        reserve(conn, found, budget)
        read.append(started.pop() + tuples(conn) - before)

    monkeypatch.setattr(budgets, "chain", starting)
    monkeypatch.setattr(budgets, "snapshots", checked)
    monkeypatch.setattr(budgets, "reserve", reserving)
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(WIDE))
    run_id = submit(fleet, "wide-budgeted", {"items": list(range(width))})
    fleet.drain()
    for name, original in (("chain", chain), ("snapshots", snapshots), ("reserve", reserve)):
        monkeypatch.setattr(budgets, name, original)
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
    assert overspent(engine, run_id) == []
    return read


def test_admission_under_a_budget_reads_the_same_rows_whatever_the_width(engine, monkeypatch):
    if engine.dialect.name != "postgresql":
        pytest.skip("reads are counted by PostgreSQL's pg_stat_xact_user_tables")
    engine.dispose()
    # Plans as on a ledger of real size: these test tables are so small (and not analyzed) that a sequential
    # scan would be cheapest, and would count every row whatever the statement needs.
    event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("SET enable_seqscan = off"))
    narrow = _tuples_read_per_admission(engine, monkeypatch, 4)
    wide = _tuples_read_per_admission(engine, monkeypatch, 60)
    assert len(narrow) == 4 and len(wide) == 60
    # Summing the tree's reservations read every row admitted before (the 60th read ~60 rows); the counters
    # are one row per budget, and the ended, unsettled holds are at most a few.
    assert max(wide) <= max(narrow) + 2, (narrow, wide)


def test_the_counters_hold_each_admitted_budget_until_it_is_settled(engine):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: (ctx.meter(tokens=7, cost_usd=0.01),
                                                             WorkResult(output={}))[1]},
                  registry=registry_of(WIDE))
    run_id = submit(fleet, "wide-budgeted", {"items": [1, 2, 3]})
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))  # the fan-out: three assignments queued
    for _ in range(3):
        fleet.deliver(take(fleet, lambda d: d.task == TASK_EXECUTE))
    counters = _counters(engine, run_id)
    assert counters == (0, 0.0, 300, 1.5, 3)
    fleet.deliver(take(fleet, lambda d: d.task == TASK_WORK))  # one ends; not settled yet: still held
    assert _counters(engine, run_id) == (0, 0.0, 300, 1.5, 3)
    assert overspent(engine, run_id) == []
    fleet.drain()
    spent_tokens, spent_cost, held_tokens, held_cost, in_flight = _counters(engine, run_id)
    assert (spent_tokens, held_tokens, in_flight) == (21, 0, 0)
    assert spent_cost == pytest.approx(0.03) and held_cost == pytest.approx(0.0)
    assert overspent(engine, run_id) == []


def _counters(engine, run_id: str) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(select(runs.c.tree_spent_tokens, runs.c.tree_spent_cost_usd,
                                         runs.c.tree_held_tokens, runs.c.tree_held_cost_usd, runs.c.tree_in_flight)
                                  .where(runs.c.id == run_id)).one())


def test_a_handler_that_swallows_its_budget_breach_still_fails_for_good(engine):
    def sly(ctx, payload):
        try:
            ctx.meter(tokens=150)  # over its 100-token budget
        except BudgetExceeded:
            pass
        return WorkResult(output={"ok": True})

    fleet = Fleet(engine, {("rag", "embed"): sly}, registry=registry_of(WIDE))
    run_id = submit(fleet, "wide-budgeted", {"items": [1]})
    fleet.drain()
    with engine.connect() as conn:
        row = conn.execute(select(m.c.status, m.c.last_error, m.c.usage_tokens)
                           .where(m.c.run_id == run_id, m.c.kind == "assignment")).one()
        assert run_view(conn, run_id)["status"] == "failed"
    assert row.status == ledger.SETTLED and row.usage_tokens == 150
    assert row.last_error.startswith("budget.exceeded")


def test_the_migration_fills_the_counters_in_for_trees_under_way(tmp_path):
    from bus.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: (ctx.meter(tokens=5), WorkResult(output={}))[1]},
                  registry=registry_of(WIDE))
    run_id = submit(fleet, "wide-budgeted", {"items": [1, 2, 3, 4]})
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))
    for _ in range(4):
        fleet.deliver(take(fleet, lambda d: d.task == TASK_EXECUTE))
    fleet.deliver(take(fleet, lambda d: d.task == TASK_WORK))
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))  # its outcome: settled (5 tokens spent)
    before = _counters(engine, run_id)
    assert before[0] == 5 and before[4] == 3
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
        conn.commit()
    upgrade(engine)
    assert _counters(engine, run_id) == before
    assert overspent(engine, run_id) == []
    fleet.drain()
    assert _counters(engine, run_id)[2:] == (0, 0.0, 0)
    engine.dispose()
