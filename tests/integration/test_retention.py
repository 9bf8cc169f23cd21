"""Retention prunes whole ended run trees (every row of theirs), and nothing that a running root still needs."""

from __future__ import annotations

from sqlalchemy import func, select

from bus.schema import agent_messages, bus_events, introspection_events
from coordinator.retention import prune
from coordinator.schema import fan_arrivals, fan_ins, runs, tokens
from tests.integration.test_budget_tree import CHILD
from tests.integration.test_fan_arrivals import fleet_of
from tests.support.harness import Fleet, registry_of, submit
from workers.handler import WorkResult

PARENT = """
name: parent-keeps
start: kid
nodes:
  kid: {kind: subworkflow, workflow: child-work, next: hold}
  hold: {kind: wait, event: go, next: done}
  done: {kind: end}
"""


def count(conn, table, column, run_ids) -> int:
    return conn.execute(select(func.count()).select_from(table).where(column.in_(run_ids))).scalar_one()


def test_ended_trees_go_and_running_roots_keep_their_children(engine):
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(CHILD, PARENT))
    ended = submit(fleet, "child-work")
    waiting = submit(fleet, "parent-keeps")  # its child finishes; the root waits for a signal
    fleet.drain()
    with engine.connect() as conn:
        tree = {r.id: r for r in conn.execute(select(runs))}
    assert tree[ended].status == "completed" and tree[waiting].status == "waiting"
    kid = next(r.id for r in tree.values() if r.parent_run_id == waiting)
    assert tree[kid].status == "completed"

    assert prune(engine, retention_days=1, clock=lambda: fleet.clock.now + 3600).runs == 0  # too young
    pruned = prune(engine, retention_days=1, clock=lambda: fleet.clock.now + 2 * 86400)
    assert pruned.runs == 1
    with engine.connect() as conn:
        left = {r.id for r in conn.execute(select(runs.c.id))}
        assert left == {waiting, kid}
        for table, column in ((agent_messages, agent_messages.c.run_id), (bus_events, bus_events.c.run_id),
                              (introspection_events, introspection_events.c.run_id), (tokens, tokens.c.run_id)):
            assert count(conn, table, column, [ended]) == 0, table.name
            assert count(conn, table, column, [waiting]) > 0 or table is bus_events, table.name


def test_a_pruned_fan_out_takes_its_fan_ins_and_arrivals(engine):
    fleet = fleet_of(engine)
    run_id = submit(fleet, "each", {"items": [1, 2, 3]})
    fleet.drain()
    with engine.connect() as conn:
        assert count(conn, fan_arrivals, fan_arrivals.c.run_id, [run_id]) == 3
    assert prune(engine, retention_days=1, clock=lambda: fleet.clock.now + 2 * 86400).runs == 1
    with engine.connect() as conn:
        assert [count(conn, t, t.c.run_id, [run_id]) for t in (fan_ins, fan_arrivals)] == [0, 0]
