"""Sub-workflows through the real fleet (seed 000, phase 7): child runs, the ``parent_run_id`` chain,
completion and failure propagating up, and cancellation propagating down."""

from __future__ import annotations

from sqlalchemy import select

from bus import introspection
from bus.errors import WorkFailed
from bus.routing import shard_for
from bus.schema import agent_messages
from bus.settings import Settings
from coordinator import commands
from coordinator.explain import explain
from coordinator.schema import runs
from tests.support.harness import Fleet, registry_of, run_row, submit
from workers.handler import WorkResult

LEAF = """
name: level-%(depth)d
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {n: input.n}, output: out,
         next: done}
  done: {kind: end, output: {n: context.out.n, depth: "`%(depth)d`"}}
"""

MIDDLE = """
name: level-%(depth)d
start: down
nodes:
  down:
    kind: subworkflow
    workflow: level-%(next)d
    input_mapping: {n: "input.n"}
    output_mapping: {below: output}
    next: done
  done: {kind: end, output: {depth: "`%(depth)d`", below: context.below}}
"""


def nested(levels: int) -> list[str]:
    """``level-0`` starts ``level-1`` … down to a leaf task at ``level-<levels-1>``."""
    return [MIDDLE % {"depth": i, "next": i + 1} for i in range(levels - 1)] + [LEAF % {"depth": levels - 1}]


def plus_one(ctx, payload):
    return WorkResult(output={"n": payload["n"] + 1})


def family(fleet: Fleet, root_id: str) -> list[dict]:
    """Every run under ``root_id``, parents first."""
    with fleet.engine.connect() as conn:
        rows = conn.execute(select(runs).where(runs.c.root_run_id == root_id).order_by(runs.c.depth)).mappings()
        return [dict(r) for r in rows]


def assert_parent_chain(fleet: Fleet, root_id: str, levels: int) -> list[dict]:
    chain = family(fleet, root_id)
    assert [r["depth"] for r in chain] == list(range(levels))
    assert chain[0]["parent_run_id"] is None
    for parent, child in zip(chain, chain[1:], strict=False):
        assert child["parent_run_id"] == parent["id"]
        with fleet.engine.connect() as conn:
            trace = introspection.read(conn, child["id"])
        assert trace, f"child at depth {child['depth']} has no events"
        # the brain's and the dispatcher's events all name the parent
        assert {e["parent_run_id"] for e in trace if not e["type"].startswith("dispatch.assignment.started")
                and not e["type"].startswith(("dispatch.assignment.completed", "dispatch.attempt",
                                              "dispatch.retry", "dispatch.assignment.failed"))} == {parent["id"]}
    return chain


def test_three_levels_of_nesting_show_the_parent_run_id_chain(engine):
    fleet = Fleet(engine, {("t", "work"): plus_one}, registry=registry_of(*nested(3)))
    root = submit(fleet, "level-0", {"n": 41})
    fleet.drain()
    assert run_row(fleet, root)["output"] == {"depth": 0, "below": {"depth": 1, "below": {"n": 42, "depth": 2}}}
    chain = assert_parent_chain(fleet, root, 3)
    assert all(r["status"] == "completed" for r in chain)
    with fleet.engine.connect() as conn:
        start = introspection.read(conn, root, type_prefix="decision.subworkflow.start")[0]
    assert start["data"]["child_run_id"] == chain[1]["id"] and start["data"]["depth"] == 1


def test_a_run_tree_lives_in_its_roots_shard(engine):
    # Children get ids of their own, which hash elsewhere: every row and every message of the tree must still go to
    # the root's shard, so one brain and one dispatcher own the tree (and the budget it shares).
    fleet = Fleet(engine, {("t", "work"): plus_one}, registry=registry_of(*nested(4)),
                  settings=Settings(broker_url="memory://", shards=8).checked())
    root = submit(fleet, "level-0", {"n": 1}, run_id="5b0c8e3e-2f1d-4c8a-9e57-0d3f6a1b2c4d")  # children's ids follow
    fleet.drain()
    chain = assert_parent_chain(fleet, root, 4)
    shard = shard_for(root, 8)
    assert {shard_for(r["id"], 8) for r in chain[1:]} - {shard}, "the children's own ids hash elsewhere"
    with fleet.engine.connect() as conn:
        shards = {r.shard for r in conn.execute(select(agent_messages.c.shard).where(
            agent_messages.c.run_id.in_([r["id"] for r in chain])))}
    assert shards == {shard}
    assert {d.queue.rsplit(".", 1)[1] for d in fleet.publisher.sent} == {str(shard)}


def test_nesting_five_levels_deep(engine):
    fleet = Fleet(engine, {("t", "work"): plus_one}, registry=registry_of(*nested(6)))
    root = submit(fleet, "level-0", {"n": 0})
    fleet.drain()
    chain = assert_parent_chain(fleet, root, 6)
    assert [r["status"] for r in chain] == ["completed"] * 6
    output = run_row(fleet, root)["output"]
    for _ in range(5):
        output = output["below"]
    assert output == {"n": 1, "depth": 5}


def test_a_failing_grandchild_fails_every_ancestor(engine):
    def broken(ctx, payload):
        raise WorkFailed("no", retryable=False, code="work.broken")

    fleet = Fleet(engine, {("t", "work"): broken}, registry=registry_of(*nested(3)))
    root = submit(fleet, "level-0", {"n": 0})
    fleet.drain()
    chain = family(fleet, root)
    assert [r["status"] for r in chain] == ["failed"] * 3
    assert chain[2]["error"]["code"] == "work.broken"
    assert chain[1]["error"]["code"] == "subworkflow.failed"
    assert chain[0]["error"]["details"]["child_error"]["details"]["child_error"]["code"] == "work.broken"


def test_cancelling_a_parent_cancels_its_children(engine):
    fleet = Fleet(engine, {("t", "work"): plus_one}, registry=registry_of(*nested(3)))
    root = submit(fleet, "level-0", {"n": 0})
    fleet.drain(skip=lambda d: d.task == "cogo.work")  # the leaf's worker never answers
    chain = family(fleet, root)
    assert [r["status"] for r in chain] == ["waiting", "waiting", "running"]
    with fleet.engine.connect() as conn:
        [why] = explain(conn, root)["waiting_for"]
        [leaf] = explain(conn, chain[2]["id"])["waiting_for"]
    assert (why["kind"], why["child_run_id"], why["child_status"]) == ("child", chain[1]["id"], "waiting")
    assert (leaf["kind"], leaf["assignment_status"]) == ("task", "dispatched")
    with fleet.engine.begin() as conn:
        delivery = commands.cancel(conn, root, reason="operator", now=fleet.clock(), shards=1)
    fleet.publisher.send([delivery])
    fleet.drain()
    chain = family(fleet, root)
    assert [r["status"] for r in chain] == ["cancelled"] * 3
    assert chain[2]["error"]["message"].startswith("parent: parent: operator")


DOOMED = """
name: doomed
start: split
nodes:
  split: {kind: parallel, branches: [kid, broken], join: merge}
  kid: {kind: subworkflow, workflow: level-0, input_mapping: {n: "`1`"}, next: merge}
  broken: {kind: end, status: failed}
  merge: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def test_a_child_started_and_cancelled_in_one_step_is_never_created(engine):
    # Branch 0 starts a child while branch 1 fails the run in the same plan: the child's token is cancelled before
    # it was ever written, so no child run may exist to run unwatched and spend its root's budget.
    fleet = Fleet(engine, {("t", "work"): plus_one}, registry=registry_of(DOOMED, *nested(1)))
    root = submit(fleet, "doomed")
    fleet.drain()
    assert run_row(fleet, root)["status"] == "failed"
    assert [r["id"] for r in family(fleet, root)] == [root]
