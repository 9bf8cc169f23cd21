"""Pure planning of fan-out and fan-in: branch scopes, spawn counts, sync events, exactly-once joins."""

from __future__ import annotations

import pytest

from coordinator import decisions as d
from coordinator.definitions import ContractError
from tests.unit.planning_sim import Sim, all_decisions, all_types, decisions, events, types

WORK = "{kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {x: item}, output: out, next: %s}"


def foreach(mode: str = "all", m: int | None = None, body_next: str = "merge") -> str:
    join = f"{{kind: join, mode: {mode}, output: results, next: done" + (f", m: {m}" if m else "") + "}"
    return f"""
name: each
start: split
nodes:
  split: {{kind: foreach, items: input.items, body: work, join: merge}}
  work: {WORK % body_next}
  merge: {join}
  done: {{kind: end, output: {{results: context.results}}}}
"""


def parallel(n: int, mode: str = "all", m: int | None = None) -> str:
    branches = ", ".join(f"b{i}" for i in range(n))
    nodes = "\n".join(f"  b{i}: {{kind: task, route: {{service: t, role: work}}, agent: {{agent_id: w}}, "
                      f"output: out, next: merge}}" for i in range(n))
    join = f"{{kind: join, mode: {mode}, next: done" + (f", m: {m}" if m else "") + "}"
    return f"""
name: par
start: split
nodes:
  split: {{kind: parallel, branches: [{branches}], join: merge}}
{nodes}
  merge: {join}
  done: {{kind: end, output: {{merged: context.merge}}}}
"""


def test_parallel_of_10_creates_10_scopes_and_drops_10_at_the_join():
    sim = Sim(parallel(10))
    p = sim.start()
    assert events(p, "decision.routing.transition_matched")[0]["spawn_count"] == 10
    created = decisions(p, d.InitBranchTable)
    assert [x.branch_index for x in created] == list(range(10))
    assert len({x.scope for x in created}) == 10
    assert len(sim.dispatched()) == 10
    sim.drain(lambda t: {"from": t.node_id})
    assert sim.status == "completed"
    drops = all_decisions(sim, d.DropBranchTables)
    assert len(drops) == 1 and set(drops[0].scopes) == {x.scope for x in created}
    assert len(all_decisions(sim, d.FireJoin)) == 1 and len(all_decisions(sim, d.MergeBranches)) == 1
    assert sim.state.scopes == {} and sim.state.fan_ins == {}
    merged = sim.plans[-1].decisions[-1].output["merged"]
    assert [row["out"]["from"] for row in merged] == [f"b{i}" for i in range(10)]


@pytest.mark.parametrize("n", [0, 1, 7, 100])
def test_foreach_spawns_exactly_one_branch_per_item(n):
    sim = Sim(foreach(), {"items": list(range(n))})
    p = sim.start()
    assert events(p, "decision.routing.evaluate_items")[0]["count"] == n
    assert events(p, "decision.routing.transition_matched")[0]["spawn_count"] == n
    assert len(decisions(p, d.InitBranchTable)) == n
    assert len(decisions(p, d.DispatchToken)) == n
    sim.drain(lambda t: {"double": 2 * sim.state.scopes[t.scope]["item"]})
    assert sim.status == "completed"
    results = sim.plans[-1].decisions[-1].output["results"]
    assert [r["out"]["double"] for r in results] == [2 * i for i in range(n)]
    assert len(all_decisions(sim, d.FireJoin)) == 1


def test_foreach_over_nothing_fires_the_join_at_once():
    sim = Sim(foreach(), {"items": []})
    p = sim.start()
    assert types(p, "decision.sync") == ["decision.sync.check_condition", "decision.sync.activate"]
    assert events(p, "decision.sync.check_condition")[0]["expected"] == 0
    assert sim.status == "completed" and p.decisions[-1].output == {"results": []}


def test_join_all_shows_sibling_counts_until_the_last_arrives():
    sim = Sim(foreach("all"), {"items": ["a", "b", "c"]})
    sim.start()
    seen = []
    for token_id in list(sim.dispatched())[::-1]:  # arrive in reverse order
        p = sim.complete(token_id, {})
        check = events(p, "decision.sync.check_condition")[0]
        seen.append((check["arrived"], check["expected"], check["mode"], check["missing_count"]))
    assert seen == [(1, 3, "all", 2), (2, 3, "all", 1), (3, 3, "all", 0)]  # which ones: explain's question
    assert all_types(sim, "decision.sync.").count("decision.sync.wait") == 2
    assert all_types(sim, "decision.sync.").count("decision.sync.activate") == 1


def test_join_any_fires_on_the_first_and_cancels_the_rest():
    sim = Sim(foreach("any"), {"items": [1, 2, 3, 4]})
    sim.start()
    p = sim.complete("work.4", {"winner": True})
    assert events(p, "decision.sync.check_condition")[0] == {
        "fan_id": "split.1", "mode": "any", "m": None, "arrived": 1, "expected": 4, "required": 1,
        "missing_count": 3}
    [cancel] = decisions(p, d.CancelActiveTokens)
    assert cancel.token_ids == ("work.2", "work.3", "work.5")
    assert sim.status == "completed"
    assert p.decisions[-1].output == {"results": [{"item": 3, "index": 2, "out": {"winner": True}}]}
    late = sim.complete("work.2", {})  # ignored, but what it spent is still settled
    assert types(late) == ["decision.assignment.settle", "decision.event.ignored"]
    assert [type(x).__name__ for x in late.decisions] == ["SettleAssignment"]


def test_join_m_of_n_fires_on_the_mth_arrival():
    sim = Sim(foreach("m_of_n", m=3), {"items": list(range(5))})
    sim.start()
    counts = []
    for token_id in ["work.2", "work.6", "work.4"]:
        p = sim.complete(token_id, {})
        c = events(p, "decision.sync.check_condition")[0]
        counts.append((c["arrived"], c["expected"], c["m"], c["required"]))
    assert counts == [(1, 5, 3, 3), (2, 5, 3, 3), (3, 5, 3, 3)]
    assert types(p, "decision.sync") == ["decision.sync.start", "decision.sync.check_condition",
                                         "decision.sync.activate"]
    assert decisions(p, d.CancelActiveTokens)[0].token_ids == ("work.3", "work.5")
    assert [r["index"] for r in p.decisions[-1].output["results"]] == [0, 2, 4]


def test_m_of_n_with_too_few_branches_fails_before_spawning():
    sim = Sim(foreach("m_of_n", m=3), {"items": [1, 2]})
    p = sim.start()
    assert sim.status == "failed" and decisions(p, d.FailWorkflow)[0].error.code == "join.unreachable"
    assert decisions(p, d.InitBranchTable) == []


def test_a_branch_whose_path_ends_makes_an_all_join_unreachable():
    sim = Sim(foreach("all", body_next="stop").replace("  merge:", "  stop: {kind: notify}\n  merge:"),
              {"items": [1, 2]})
    sim.start()
    p = sim.complete("work.2", {})
    assert sim.status == "failed"
    assert decisions(p, d.FailWorkflow)[0].error.code == "join.unreachable"
    assert len(decisions(p, d.DropBranchTables)) == 1 and sim.state.scopes == {}


def test_each_branch_writes_only_its_own_scope():
    sim = Sim(foreach(), {"items": ["x", "y"]})
    scopes = [x.scope for x in decisions(sim.start(), d.InitBranchTable)]
    p = sim.complete("work.3", {"v": "y"})
    assert decisions(p, d.ApplyBranchOutput) == [d.ApplyBranchOutput("work.3", scopes[1], "out", {"v": "y"})]
    assert sim.state.scopes[scopes[1]] == {"item": "y", "index": 1, "out": {"v": "y"}}
    assert sim.state.scopes[scopes[0]] == {"item": "x", "index": 0}
    assert "out" not in sim.state.context


def test_cancel_during_a_fan_out_drops_every_scope_and_closes_the_join():
    sim = Sim(parallel(3))
    sim.start()
    sim.complete("b0.2", {})
    from coordinator import events as ev
    p = sim.send(ev.Cancel, reason="stop")
    assert [type(x).__name__ for x in p.decisions] == ["CancelActiveTokens", "AbandonAssignments", "CloseFanIn",
                                                        "DropBranchTables", "CancelWorkflow"]
    [abandon] = decisions(p, d.AbandonAssignments)  # the two branches still at work: b0 is done
    assert len(abandon.assignment_ids) == 2 and abandon.reason == "stop"
    assert sim.state.scopes == {} and sim.status == "cancelled"


def test_nested_foreach_sees_the_outer_item_and_merges_into_the_outer_branch():
    sim = Sim("""
name: nested
start: outer
nodes:
  outer: {kind: foreach, items: input.groups, as: group, body: inner, join: outer-join}
  inner: {kind: foreach, items: item.members, body: work, join: inner-join}
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w},
         input: {member: item, group: context.group.name}, output: out, next: inner-join}
  inner-join: {kind: join, output: members, next: outer-join}
  outer-join: {kind: join, output: groups, next: done}
  done: {kind: end, output: {groups: "context.groups[*].members[*].out"}}
""", {"groups": [{"name": "g1", "members": [1, 2]}, {"name": "g2", "members": [3]}]})
    p = sim.start()
    inputs = [x.input for x in decisions(p, d.DispatchToken)]
    assert inputs == [{"member": 1, "group": "g1"}, {"member": 2, "group": "g1"}, {"member": 3, "group": "g2"}]
    sim.drain(lambda t: {"m": sim.state.scopes[t.scope]["item"]})
    assert sim.status == "completed"
    assert sim.plans[-1].decisions[-1].output == {"groups": [[{"m": 1}, {"m": 2}], [{"m": 3}]]}
    assert len(all_decisions(sim, d.FireJoin)) == 3


def test_foreach_over_something_that_is_not_a_list_fails_with_its_reason():
    sim = Sim(foreach(), {"items": "abc"})
    p = sim.start()
    assert decisions(p, d.FailWorkflow)[0].error.code == "foreach.not_a_list"


def test_join_without_a_fan_out_passes_through():
    sim = Sim("""
name: lone
start: j
nodes:
  j: {kind: join, next: done}
  done: {kind: end}
""")
    p = sim.start()
    assert "decision.sync.pass_through" in types(p) and sim.status == "completed"


def test_definition_requires_join_to_name_a_join_node():
    with pytest.raises(ContractError, match="must name a join node"):
        Sim("""
name: bad
start: split
nodes:
  split: {kind: parallel, branches: [a], join: a}
  a: {kind: end}
""")


def test_a_fan_out_that_times_out_cancels_its_branches_and_fails_the_run():
    sim = Sim(parallel(3).replace("join: merge}", "join: merge, timeout_ms: 1000}", 1))
    p = sim.start()
    assert [x.purpose for x in decisions(p, d.ScheduleAlarm)] == ["timeout"]
    sim.complete("b0.2", {})
    p = sim.timer("split.1", "timeout")
    assert decisions(p, d.CancelActiveTokens)[0].token_ids == ("split.1", "b1.3", "b2.4")
    assert [type(x).__name__ for x in p.decisions][1:4] == ["AbandonAssignments", "CloseFanIn", "DropBranchTables"]
    assert sim.status == "failed" and decisions(p, d.FailWorkflow)[0].error.code == "node.timeout"
    assert sim.state.scopes == {} and sim.state.tokens == {}


def test_a_foreach_never_spawns_past_the_ceiling_whatever_its_definition_says():
    from coordinator.planning.fanout import FOREACH_CEILING

    wide = foreach().replace("split: {kind: foreach,", f"split: {{kind: foreach, max_items: {FOREACH_CEILING * 10},")
    sim = Sim(wide, {"items": list(range(FOREACH_CEILING + 1))})
    p = sim.start()
    assert sim.status == "failed"
    failure = decisions(p, d.FailWorkflow)[0]
    assert failure.error.code == "foreach.too_many" and str(FOREACH_CEILING) in failure.error.message
    assert sim.dispatched() == []
    at_ceiling = Sim(wide, {"items": list(range(FOREACH_CEILING))})
    at_ceiling.start()
    assert len(at_ceiling.dispatched()) == FOREACH_CEILING


def partial(state, focus: str):
    """What ``load_state(focus=...)`` reads: the focus token, whether its branch arrived at its join, the owners of
    the open fan-ins, their scopes and those scopes' loop counters."""
    from dataclasses import replace

    from coordinator.state import WAITING
    keep = {focus, *(f.owner for f in state.fan_ins.values())}
    tokens = {k: t for k, t in state.tokens.items() if k in keep}
    left = [t for k, t in state.tokens.items() if k not in keep]
    waiting = sum(t.status == WAITING for t in left)
    loaded = {t.scope for t in tokens.values() if t.scope}
    mine = tokens.get(focus)
    fans = {k: replace(f, arrived=f.arrived & ({mine.branch_index} if mine and mine.fan_id == k else set()))
            for k, f in state.fan_ins.items()}
    return replace(state, tokens=tokens, fan_ins=fans, scopes={s: v for s, v in state.scopes.items() if s in loaded},
                   visits={k: n for k, n in state.visits.items() if k.rsplit("/", 1)[0] in {"", *loaded}},
                   visit_scopes=frozenset(loaded), whole=False, unloaded=(len(left) - waiting, waiting))


@pytest.mark.parametrize("mode, m", [("all", None), ("any", None), ("m_of_n", 3)])
def test_an_arrival_planned_on_what_it_touches_is_the_plan_of_the_whole_state_or_asks_for_it(mode, m):
    from coordinator import events as ev
    from coordinator.planning import plan
    from coordinator.planning.working import NeedsWholeState

    sim = Sim(foreach(mode, m), {"items": list(range(6))})
    sim.start()
    asked = 0
    while sim.status not in ("completed", "failed"):
        token = sorted(sim.dispatched())[0]
        whole_state = sim.state
        event = ev.TaskCompleted(f"x{token}", whole_state.run.id, token_id=token, output={"v": token},
                                 assignment_id=whole_state.tokens[token].assignment_id, attempts=1)
        expected = plan(whole_state, event, now=sim.now)
        try:
            got = plan(partial(whole_state, token), event, now=sim.now)
        except NeedsWholeState:
            asked += 1
        else:
            assert got.items == expected.items and got.changes == expected.changes
            assert got.next_state.run.status == expected.next_state.run.status
        sim.complete(token, {"v": token})
    assert asked == 1  # only the arrival that fires the join needs every branch


def test_an_arrival_writes_its_own_row_and_the_count_and_the_context_only_when_it_changes():
    sim = Sim(foreach(), {"items": list(range(50))})
    sim.start()
    p = sim.complete("work.30", {"v": 1})  # branch 28
    assert p.changes.arrivals == (("split.1", 28, "merge.52"),)
    assert p.changes.fan_updates == (("split.1", 1, False),)  # the count, never the list of who arrived
    assert p.changes.context == {}  # the branch wrote its own scope: the run's context is not rewritten
    sim.drain(lambda t: {})
    fired = sim.plans[-1]
    assert fired.changes.fan_updates == (("split.1", 50, True),) and len(fired.changes.arrivals) == 1
    assert fired.changes.context == {"results": sim.state.context["results"]}  # phase 1 writes that one key
    assert len(sim.state.context["results"]) == 50
