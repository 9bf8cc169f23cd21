"""Seed 000's phase 10 through the real fleet: a ReAct loop, a Tree-of-Thought and a consensus of five
judges — each proven by its event sequence, not only by "completed"."""

from __future__ import annotations

from tests.support.harness import Fleet, events, registry_of, run_row, submit, types
from workers.handler import WorkResult

REACT = """
name: react
start: think
max_loops: 5
nodes:
  think:
    kind: task
    route: {service: agent, role: think}
    agent: {agent_id: reasoner}
    input: {question: input.question, observation: context.observe}
    output: thought
    next:
      - {to: answer, when: "output.final"}
      - {to: act}
  act: {kind: task, route: {service: agent, role: act}, agent: {agent_id: tool},
        input: {action: context.thought.action}, output: act, next: observe}
  observe: {kind: task, route: {service: agent, role: observe}, agent: {agent_id: tool},
            input: {result: context.act.result}, output: observe, next: think}
  answer: {kind: end, output: {answer: context.thought.final, steps: context.thought.step}}
"""


def test_react_loop_iterates_think_act_observe_until_an_answer(engine):
    steps = iter(range(1, 100))

    def think(ctx, payload):
        step = next(steps)
        if step == 3:
            return WorkResult(output={"final": "42", "step": step})
        return WorkResult(output={"action": f"lookup-{step}", "step": step})

    handlers = {("agent", "think"): think,
                ("agent", "act"): lambda ctx, p: WorkResult(output={"result": p["action"] + ":found"}),
                ("agent", "observe"): lambda ctx, p: WorkResult(output={"seen": p["result"]})}
    fleet = Fleet(engine, handlers, registry=registry_of(REACT))
    run_id = submit(fleet, "react", {"question": "the answer?"})
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"answer": "42", "steps": 3}
    think_routes = [(e["data"]["to"], e["data"]["matched"]) for e in events(fleet, run_id, "decision.routing.evaluate")
                    if e["node_id"] == "think"]
    assert think_routes == [("answer", False), ("act", True), ("answer", False), ("act", True), ("answer", True)]
    created = [(e["node_id"], e["data"]["iteration"]) for e in events(fleet, run_id, "operation.tokens.create")]
    assert created == [("think", 0), ("act", 0), ("observe", 0), ("think", 1), ("act", 1), ("observe", 1),
                       ("think", 2), ("answer", 0)]


TREE_OF_THOUGHT = """
name: tot
start: propose
nodes:
  propose: {kind: task, route: {service: agent, role: propose}, agent: {agent_id: p}, output: ideas, next: explore}
  explore: {kind: foreach, items: context.ideas.thoughts, body: evaluate, join: gather}
  evaluate: {kind: task, route: {service: agent, role: evaluate}, agent: {agent_id: e}, input: {thought: item},
             output: score, next: gather}
  gather: {kind: join, mode: all, output: scored, next: choose}
  choose:
    kind: gate
    assert: "max(context.scored[].score.value) >= `0.7`"
    pass: best
    fail: none
  best: {kind: end, output: {best: "max_by(context.scored, &score.value).item", explored: "length(context.scored)"}}
  none: {kind: end, status: failed}
"""


def test_tree_of_thought_branches_evaluates_and_picks_the_best(engine):
    handlers = {("agent", "propose"): lambda ctx, p: WorkResult(output={"thoughts": ["a", "bb", "ccc"]}),
                ("agent", "evaluate"): lambda ctx, p: WorkResult(output={"value": len(p["thought"]) / 4})}
    fleet = Fleet(engine, handlers, registry=registry_of(TREE_OF_THOUGHT))
    run_id = submit(fleet, "tot")
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"best": "ccc", "explored": 3}
    trace = types(fleet, run_id)
    assert trace.count("operation.context.branch_table.create") == 3 == trace.count("operation.context.write")
    assert [e["data"]["rows"] for e in events(fleet, run_id, "operation.context.merge.complete")] == [3]
    [gate] = events(fleet, run_id, "decision.gate.evaluate")
    assert (gate["data"]["passed"], gate["data"]["value"], gate["data"]["to"]) == (True, True, "best")


CONSENSUS = """
name: consensus
start: ask
nodes:
  ask: {kind: foreach, items: input.judges, body: judge, join: tally}
  judge: {kind: task, route: {service: agent, role: judge}, agent: {agent_id: judge},
          input: {judge: item, claim: input.claim}, output: verdict, next: tally}
  tally: {kind: join, mode: all, output: votes, next: decide}
  decide:
    kind: gate
    assert: "length(context.votes[?verdict.approve]) >= `3`"
    pass: accepted
    fail: rejected
  accepted: {kind: end, output: {accepted: "`true`", for: "length(context.votes[?verdict.approve])"}}
  rejected: {kind: end, output: {accepted: "`false`", for: "length(context.votes[?verdict.approve])"}}
"""


def test_consensus_of_five_judges_fans_out_merges_and_aggregates_the_votes(engine):
    approve = {"j1": True, "j2": False, "j3": True, "j4": True, "j5": False}
    handlers = {("agent", "judge"): lambda ctx, p: WorkResult(output={"approve": approve[p["judge"]]})}
    fleet = Fleet(engine, handlers, registry=registry_of(CONSENSUS))
    run_id = submit(fleet, "consensus", {"judges": list(approve), "claim": "cogo is fast"})
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"accepted": True, "for": 3}
    [spawn] = [e for e in events(fleet, run_id, "decision.routing.transition_matched") if e["node_id"] == "ask"]
    assert spawn["data"]["spawn_count"] == 5
    checks = [e["data"]["arrived"] for e in events(fleet, run_id, "decision.sync.check_condition")]
    assert checks == [1, 2, 3, 4, 5]
    [merged] = events(fleet, run_id, "operation.context.merge.complete")
    assert merged["data"]["rows"] == 5
    assert types(fleet, run_id).count("operation.context.branch_table.drop") == 5
