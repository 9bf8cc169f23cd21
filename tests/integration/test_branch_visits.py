"""A branch's loop counters live in their own rows (``run_visits``): an arrival at a wide join reads and writes
its own branch's, the run row keeps only the root scope's, the loop bound still holds in every branch, and the
counters go when their branches are merged."""

from __future__ import annotations

from alembic import command
from sqlalchemy import func, select, text

from bus.celery_app import TASK_DECIDE
from bus.migrate import alembic_config, upgrade
from coordinator.schema import run_visits, runs
from coordinator.store import run_view
from tests.support.harness import Fleet, registry_of, submit
from workers.handler import WorkResult

LOOPING = """
name: looping-branches
start: fan
max_loops: 2
nodes:
  fan: {kind: foreach, items: "input.items", body: work, join: all}
  work:
    kind: task
    route: {service: t, role: work}
    agent: {agent_id: w}
    input: {item: item}
    next:
      - {to: work, when: "output.again"}
      - {to: all}
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def _looping_fleet(engine, again_for: set[int]) -> Fleet:
    def work(ctx, payload):
        return WorkResult(output={"again": payload.get("item") in again_for})
    return Fleet(engine, {("t", "work"): work}, registry=registry_of(LOOPING))


def test_branch_counters_are_rows_of_their_own_and_go_with_their_branches(engine):
    fleet = _looping_fleet(engine, again_for=set())
    run_id = submit(fleet, "looping-branches", {"items": [1, 2, 3, 4]})
    seen_rows, seen_root = 0, []
    while (nxt := fleet.publisher.pop()) is not None:
        fleet.deliver(nxt[1])
        with engine.connect() as conn:
            seen_rows = max(seen_rows, conn.execute(select(func.count()).select_from(run_visits)
                                                   .where(run_visits.c.run_id == run_id)).scalar())
            seen_root.append(conn.execute(select(runs.c.visits).where(runs.c.id == run_id)).scalar())
    assert seen_rows >= 4  # each branch counted its own entries, in rows
    assert all(all(k.startswith("/") for k in visits) for visits in seen_root)  # the run row: root scope only
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
        assert conn.execute(select(func.count()).select_from(run_visits)).scalar() == 0  # dropped at the join


def test_the_loop_bound_holds_in_each_branch(engine):
    fleet = _looping_fleet(engine, again_for={2})  # branch 2 loops for ever; the others go straight to the join
    run_id = submit(fleet, "looping-branches", {"items": [1, 2, 3]})
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "loop.max_feedback_loops"


def test_the_migration_moves_branch_counters_out_of_the_run_row(tmp_path):
    from bus.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    fleet = _looping_fleet(engine, again_for=set())
    run_id = submit(fleet, "looping-branches", {"items": [1, 2, 3]})
    fleet.deliver(next(d for d in fleet.publisher.pending() if d.task == TASK_DECIDE))  # the fan-out
    with engine.connect() as conn:
        before = {(r.scope, r.node_id): r.count for r in conn.execute(select(run_visits))}
    assert len(before) == 3
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")  # back to the counters in the run row
        conn.commit()
        assert len(conn.execute(text("SELECT visits FROM runs")).scalar()) > 40
    upgrade(engine)
    with engine.connect() as conn:
        after = {(r.scope, r.node_id): r.count for r in conn.execute(select(run_visits))}
        root = conn.execute(select(runs.c.visits).where(runs.c.id == run_id)).scalar()
    assert after == before and all(k.startswith("/") for k in root)
    fleet.drain()
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
    engine.dispose()
