"""Routing through the real brain, dispatcher and runtime (seed 000, phase 3): transitions, gates,
bounded feedback loops, retries with their backoff and node timeouts — on SQLite and PostgreSQL."""

from __future__ import annotations

from bus.errors import WorkFailed
from tests.support.harness import Fleet, events, registry_of, run_row, submit, types
from workers.handler import WorkResult

THREE_WAY = """
name: three-way
start: classify
nodes:
  classify:
    kind: task
    route: {service: t, role: classify}
    agent: {agent_id: w}
    output: c
    next:
      - {to: small, when: "output.size < `10`"}
      - {to: medium, when: "output.size < `100`"}
      - {to: large}
  small: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: path, next: done}
  medium: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: path, next: done}
  large: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: path, next: done}
  done: {kind: end, output: {path: context.path.node}}
"""


def test_three_transitions_are_each_evaluated_and_the_right_path_is_taken(engine):
    handlers = {("t", "classify"): lambda ctx, p: WorkResult(output={"size": 50}),
                ("t", "work"): lambda ctx, p: WorkResult(output={"node": ctx.node_id})}
    fleet = Fleet(engine, handlers, registry=registry_of(THREE_WAY))
    run_id = submit(fleet, "three-way")
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"path": "medium"}
    routing = events(fleet, run_id, "decision.routing")
    assert [(e["type"].rsplit(".", 1)[1], e["data"].get("to"), e["data"].get("matched")) for e in routing] == [
        ("start", None, None),
        ("evaluate_transition", "small", False),
        ("evaluate_transition", "medium", True),
        ("transition_matched", "medium", None),
        ("evaluate_transition", "done", True),
        ("transition_matched", "done", None),
    ]
    assert routing[2]["data"]["condition"] == "output.size < `100`" and routing[2]["data"]["value"] is True
    assert routing[3]["data"]["rejected"] == ["large"]


FEEDBACK = """
name: feedback
start: generate
max_loops: 3
nodes:
  generate:
    kind: task
    route: {service: t, role: gen}
    agent: {agent_id: w}
    input: {feedback: "context.test.feedback || ''"}
    output: code
    next: test
  test: {kind: task, route: {service: t, role: test}, agent: {agent_id: w}, output: test, next: gate}
  gate:
    kind: gate
    success_rate: {value: context.test.success_rate, threshold: 0.8}
    pass: done
    fail: generate
  done: {kind: end, output: {rate: context.test.success_rate, loops: context.code.seen}}
"""


def feedback_fleet(engine, rates: list[float]) -> tuple[Fleet, list[str]]:
    seen: list[str] = []
    rate = iter(rates)

    def gen(ctx, payload):
        seen.append(payload["feedback"])
        return WorkResult(output={"seen": len(seen)})

    def test(ctx, payload):
        r = next(rate)
        return WorkResult(output={"success_rate": r, "feedback": f"rate was {r}"})

    return Fleet(engine, {("t", "gen"): gen, ("t", "test"): test}, registry=registry_of(FEEDBACK)), seen


def test_feedback_loop_retries_with_feedback_until_the_gate_passes(engine):
    fleet, seen = feedback_fleet(engine, [0.2, 0.5, 0.9])
    run_id = submit(fleet, "feedback")
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"rate": 0.9, "loops": 3}
    assert seen == ["", "rate was 0.2", "rate was 0.5"]
    gates = [(e["data"]["passed"], e["data"]["to"]) for e in events(fleet, run_id, "decision.gate.evaluate")]
    assert gates == [(False, "generate"), (False, "generate"), (True, "done")]


def test_feedback_loop_is_bounded_at_three(engine):
    fleet, seen = feedback_fleet(engine, [0.1] * 10)
    run_id = submit(fleet, "feedback")
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "loop.max_feedback_loops"
    assert len(seen) == 4  # the first try and 3 feedback loops
    assert types(fleet, run_id, "decision.workflow") == ["decision.workflow.fail"]


RETRY = """
name: retry
start: flaky
nodes:
  flaky:
    kind: task
    route: {service: t, role: flaky}
    agent: {agent_id: w}
    retry: {maximum_attempts: 3, initial_interval_ms: 200, backoff_coefficient: 2.0, jitter: 0.0}
    output: flaky
    next: done
  done: {kind: end, output: {attempt: context.flaky.attempt}}
"""


def test_a_node_that_fails_twice_then_succeeds_shows_three_attempts_with_their_backoff(engine):
    def flaky(ctx, payload):
        if ctx.attempt < 3:
            raise WorkFailed(f"attempt {ctx.attempt} failed", retryable=True)
        return WorkResult(output={"attempt": ctx.attempt})

    fleet = Fleet(engine, {("t", "flaky"): flaky}, registry=registry_of(RETRY))
    run_id = submit(fleet, "retry")
    start = fleet.clock()
    fleet.drain()
    assert run_row(fleet, run_id)["output"] == {"attempt": 3}
    dispatch = events(fleet, run_id, "dispatch.")
    assert [e["type"] for e in dispatch] == [
        "dispatch.token.enqueued",
        "dispatch.assignment.admitted", "dispatch.assignment.started", "dispatch.attempt.failed",
        "dispatch.retry.scheduled",
        "dispatch.assignment.admitted", "dispatch.assignment.started", "dispatch.attempt.failed",
        "dispatch.retry.scheduled",
        "dispatch.assignment.admitted", "dispatch.assignment.started", "dispatch.assignment.completed",
        "dispatch.assignment.settled",
    ]
    started = [e for e in dispatch if e["type"] == "dispatch.assignment.started"]
    assert [e["data"]["attempt"] for e in started] == [1, 2, 3]
    retries = [e["data"] for e in dispatch if e["type"] == "dispatch.retry.scheduled"]
    assert [(r["backoff_ms"], r["next_attempt"]) for r in retries] == [(200, 2), (400, 3)]
    assert [round(e["created_at"] - start, 3) for e in started] == [0.0, 0.2, 0.6]
    assert types(fleet, run_id, "decision.task") == ["decision.task.dispatch", "decision.task.completed"]


TIMEOUT = """
name: slow
start: work
nodes:
  work: {kind: task, route: {service: t, role: slow}, agent: {agent_id: w}, timeout_ms: 5000, on_failure: late}
  late: {kind: end, output: {late: "`true`"}}
"""


def test_task_timeout_fires_when_no_outcome_arrives(engine):
    fleet = Fleet(engine, {("t", "slow"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(TIMEOUT))
    run_id = submit(fleet, "slow")
    fleet.drain(skip=lambda delivery: delivery.task == "cogo.work")  # the worker never answers
    run = run_row(fleet, run_id)
    assert run["status"] == "completed" and run["output"] == {"late": True}
    assert types(fleet, run_id, "decision.task") == ["decision.task.dispatch", "decision.task.timeout",
                                                     "decision.task.failed"]


RACE_TO_THE_END = """
name: race-to-the-end
start: split
nodes:
  split: {kind: parallel, branches: [slow, quick], join: merge}
  slow: {kind: task, route: {service: t, role: slow}, agent: {agent_id: w}, timeout_ms: 60000, next: merge}
  quick: {kind: end, output: {won: "`true`"}}
  merge: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def test_a_timer_scheduled_in_the_step_that_ends_the_run_is_never_written(engine):
    from sqlalchemy import func, select

    from bus.schema import agent_messages as m

    fleet = Fleet(engine, {("t", "slow"): lambda ctx, payload: WorkResult(output={})},
                  registry=registry_of(RACE_TO_THE_END))
    run_id = submit(fleet, "race-to-the-end")
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"
    with engine.connect() as conn:
        timers = conn.execute(select(func.count()).where(m.c.run_id == run_id, m.c.kind == "timer")).scalar()
    assert timers == 0  # the slow task's timeout was planned in the step that ended the run: nothing to wake
