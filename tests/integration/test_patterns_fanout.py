"""Fan-out and fan-in through the real fleet (seed 000, phases 4 to 6): branch scopes created and
dropped, sibling counts at the join, foreach spawn counts — and nothing leaked, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from coordinator.schema import branch_scopes, fan_ins, tokens
from coordinator.state import TOKEN_ACTIVE
from tests.support.harness import Fleet, events, registry_of, run_row, submit, types
from workers.handler import WorkResult


def leftovers(fleet: Fleet, run_id: str) -> dict[str, int]:
    """What a finished run must not leave behind."""
    with fleet.engine.connect() as conn:
        scopes = conn.execute(select(func.count()).select_from(branch_scopes)
                              .where(branch_scopes.c.run_id == run_id)).scalar_one()
        active = conn.execute(select(func.count()).select_from(tokens)
                              .where(tokens.c.run_id == run_id, tokens.c.status.in_(TOKEN_ACTIVE))).scalar_one()
        unfired = conn.execute(select(func.count()).select_from(fan_ins)
                               .where(fan_ins.c.run_id == run_id, fan_ins.c.fired.is_(False))).scalar_one()
    return {"scopes": scopes, "active_tokens": active, "unfired_joins": unfired}


CLEAN = {"scopes": 0, "active_tokens": 0, "unfired_joins": 0}


def parallel(n: int) -> str:
    nodes = "\n".join(f"  b{i}: {{kind: task, route: {{service: t, role: work}}, agent: {{agent_id: w}}, "
                      f"output: out, next: merge}}" for i in range(n))
    return f"""
name: par{n}
start: split
nodes:
  split: {{kind: parallel, branches: [{", ".join(f"b{i}" for i in range(n))}], join: merge}}
{nodes}
  merge: {{kind: join, mode: all, output: merged, next: done}}
  done: {{kind: end, output: {{nodes: "context.merged[].out.node"}}}}
"""


def node_echo(ctx, payload):
    return WorkResult(output={"node": ctx.node_id, **payload})


def test_fan_out_of_10_creates_10_branch_tables_drops_10_and_leaks_none(engine):
    fleet = Fleet(engine, {("t", "work"): node_echo}, registry=registry_of(parallel(10)))
    run_id = submit(fleet, "par10")
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"nodes": [f"b{i}" for i in range(10)]}
    trace = types(fleet, run_id)
    assert trace.count("operation.context.branch_table.create") == 10
    assert trace.count("operation.context.branch_table.drop") == 10
    assert trace.count("operation.context.write") == 10
    [matched] = [e for e in events(fleet, run_id, "decision.routing.transition_matched") if e["node_id"] == "split"]
    assert matched["data"]["spawn_count"] == 10
    created = {e["data"]["scope"] for e in events(fleet, run_id, "operation.context.branch_table.create")}
    dropped = {e["data"]["scope"] for e in events(fleet, run_id, "operation.context.branch_table.drop")}
    assert created == dropped and len(created) == 10
    writes = events(fleet, run_id, "operation.context.write")
    assert {w["data"]["scope"] for w in writes} == created  # every branch wrote to its own scope only
    merge = events(fleet, run_id, "operation.context.merge")
    assert [(e["type"], e["data"].get("rows")) for e in merge] == [
        ("operation.context.merge.start", None), ("operation.context.merge.complete", 10)]
    assert trace.index("operation.context.merge.complete") < trace.index("operation.context.branch_table.drop")
    assert leftovers(fleet, run_id) == CLEAN


FOREACH = """
name: each
start: split
nodes:
  split: {kind: foreach, items: input.items, body: work, join: merge, max_items: 1000}
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {x: item}, output: out,
         next: merge}
  merge: {kind: join, mode: all, output: results, next: done}
  done: {kind: end, output: {doubled: "context.results[].out.doubled"}}
"""


@pytest.mark.parametrize("n", [0, 1, 7, 100])
def test_foreach_spawns_exactly_one_branch_per_item(engine, n):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"doubled": 2 * p["x"]})},
                  registry=registry_of(FOREACH))
    run_id = submit(fleet, "each", {"items": list(range(n))})
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"doubled": [2 * i for i in range(n)]}
    [evaluated] = events(fleet, run_id, "decision.routing.evaluate_items")
    assert evaluated["data"]["count"] == n
    [matched] = [e for e in events(fleet, run_id, "decision.routing.transition_matched") if e["node_id"] == "split"]
    assert matched["data"]["spawn_count"] == n
    trace = types(fleet, run_id)
    assert trace.count("operation.context.branch_table.create") == n == trace.count("dispatch.assignment.started")
    assert trace.count("operation.context.branch_table.drop") == n
    assert trace.count("operation.fan_in.fire") == 1
    assert leftovers(fleet, run_id) == CLEAN


def join_flow(mode: str, m: int | None = None) -> str:
    extra = f", m: {m}" if m else ""
    return f"""
name: join-{mode}
start: split
nodes:
  split: {{kind: foreach, items: input.delays, body: work, join: merge}}
  work: {{kind: task, route: {{service: t, role: work}}, agent: {{agent_id: w}}, input: {{d: item}}, output: out,
          next: merge}}
  merge: {{kind: join, mode: {mode}{extra}, output: results, next: done}}
  done: {{kind: end, output: {{arrived: "context.results[].index"}}}}
"""


def fleet_for(engine, mode: str, m: int | None = None) -> Fleet:
    return Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"d": p["d"]})},
                 registry=registry_of(join_flow(mode, m)))


def sync_counts(fleet: Fleet, run_id: str) -> list[tuple]:
    checks = events(fleet, run_id, "decision.sync.check_condition")
    return [(c["data"]["arrived"], c["data"]["expected"], c["data"]["mode"], c["data"]["m"]) for c in checks]


def test_join_all_waits_for_every_sibling(engine):
    fleet = fleet_for(engine, "all")
    run_id = submit(fleet, "join-all", {"delays": [3, 1, 2]})
    fleet.drain()
    assert sync_counts(fleet, run_id) == [(1, 3, "all", None), (2, 3, "all", None), (3, 3, "all", None)]
    assert types(fleet, run_id, "decision.sync.") == [
        "decision.sync.start", "decision.sync.check_condition", "decision.sync.wait",
        "decision.sync.start", "decision.sync.check_condition", "decision.sync.wait",
        "decision.sync.start", "decision.sync.check_condition", "decision.sync.activate"]
    assert run_row(fleet, run_id)["output"] == {"arrived": [0, 1, 2]}
    assert leftovers(fleet, run_id) == CLEAN


def test_join_any_fires_once_and_cancels_the_siblings_still_running(engine):
    fleet = fleet_for(engine, "any")
    run_id = submit(fleet, "join-any", {"delays": [3, 1, 2]})
    # Only branch 1's assignment reaches its worker before the join fires; the others stay queued.
    fleet.drain(skip=lambda d: d.task == "cogo.work" and d.message_id != _assignment_of(fleet, run_id, 1))
    assert sync_counts(fleet, run_id) == [(1, 3, "any", None)]
    assert run_row(fleet, run_id)["output"] == {"arrived": [1]}
    [cancel] = events(fleet, run_id, "decision.tokens.cancel")
    assert len(cancel["data"]["token_ids"]) == 2 and "fired" in cancel["data"]["reason"]
    assert types(fleet, run_id).count("operation.fan_in.fire") == 1
    assert leftovers(fleet, run_id) == CLEAN


def _assignment_of(fleet: Fleet, run_id: str, branch: int) -> str | None:
    with fleet.engine.connect() as conn:
        return conn.execute(select(tokens.c.assignment_id).where(tokens.c.run_id == run_id,
                                                                 tokens.c.node_id == "work",
                                                                 tokens.c.branch_index == branch)).scalar()


def test_join_m_of_n_fires_on_the_mth_sibling(engine):
    fleet = fleet_for(engine, "m_of_n", 3)
    run_id = submit(fleet, "join-m_of_n", {"delays": [1, 2, 3, 4, 5]})
    fleet.drain()
    assert sync_counts(fleet, run_id) == [(1, 5, "m_of_n", 3), (2, 5, "m_of_n", 3), (3, 5, "m_of_n", 3)]
    assert types(fleet, run_id).count("decision.sync.activate") == 1
    assert len(run_row(fleet, run_id)["output"]["arrived"]) == 3
    assert leftovers(fleet, run_id) == CLEAN
    # the late siblings' outcomes arrive after the join fired: ignored, counted nowhere
    ignored = [e["data"]["reason"] for e in events(fleet, run_id, "decision.event.ignored")]
    assert len(ignored) == 2
