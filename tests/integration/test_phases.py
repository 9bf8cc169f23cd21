"""Seed 004's phase form compiled and run by the real brain, dispatcher and runtime (SQLite and PostgreSQL):
best-effort tasks under and over the gate, the feedback loop and its bound, and the built-in asdlc example with
the real codegen and build-test handlers."""

from __future__ import annotations

from bus.errors import WorkFailed
from bus.settings import Settings
from coordinator.definitions import Registry
from coordinator.replay import replay_run
from tests.support.harness import Fleet, events, registry_of, run_row, submit, types
from workers import build_test, codegen
from workers.handler import WorkResult

PHASED = """
name: phased
agent_types:
  coding: {route: t.code}
  review: {route: t.review}
  monitor: {route: t.watch}
phases:
  - name: development
    tasks:
      - {name: write, assigned_to: coding, input: {feedback: "context.monitoring[0].watch.feedback || ''"}}
      - {name: lint, assigned_to: review, input: {code: context.write.code}}
      - {name: review, assigned_to: review, input: {code: context.write.code}}
  - devops
  - name: monitoring
    tasks: [{name: watch, assigned_to: monitor, input: {code: "context.development[0].write.code"}}]
gate: {required_success_rate: THRESHOLD}
feedback: {from: monitoring, to: development, when: "context.monitoring[0].watch.healthy == `false`",
           max_feedback_loops: 2}
output: {code: "context.development[0].write.code", healthy: "context.monitoring[0].watch.healthy"}
"""


def phased_fleet(engine, *, threshold: float, healthy: list[bool], failing: set[str] = frozenset()):
    """A fleet for PHASED whose monitor answers ``healthy`` in turn; review tasks named in ``failing`` fail."""
    seen: list[str] = []
    answers = iter(healthy)

    def write(ctx, payload):
        seen.append(payload["feedback"])
        return WorkResult(output={"code": f"v{len(seen)}"})

    def review(ctx, payload):
        if ctx.node_id.removeprefix("development-") in failing:
            raise WorkFailed(f"{ctx.node_id} found nothing to say", retryable=False, code="review.failed")
        return WorkResult(output={"ok": True, "code": payload["code"]})

    def watch(ctx, payload):
        ok = next(answers)
        return WorkResult(output={"healthy": ok, "feedback": f"{payload['code']} unhealthy" if not ok else ""})

    registry = registry_of(PHASED.replace("THRESHOLD", str(threshold)))
    handlers = {("t", "code"): write, ("t", "review"): review, ("t", "watch"): watch}
    return Fleet(engine, handlers, registry=registry), seen


def gates(fleet: Fleet, run_id: str) -> list[tuple[str, object, bool]]:
    """Every gate the run passed through: (node, value seen, passed)."""
    return [(e["node_id"], e["data"]["value"], e["data"]["passed"]) for e in events(fleet, run_id, "decision.gate")]


def test_a_failed_task_above_the_gate_threshold_is_recorded_and_the_run_goes_on(engine):
    fleet, _ = phased_fleet(engine, threshold=0.6, healthy=[True], failing={"lint"})
    run_id = submit(fleet, "phased")
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "completed", run["error"]
    assert run["output"] == {"code": "v1", "healthy": True}
    [failed] = events(fleet, run_id, "decision.task.failed")
    assert failed["node_id"] == "development-lint" and failed["data"]["error"]["code"] == "review.failed"
    assert gates(fleet, run_id) == [("development--gate", 2 / 3, True), ("devops", "skipped", True),
                                    ("monitoring--gate", 1.0, True), ("monitoring--feedback", False, False)]
    assert replay_run(engine, run_id, registry=fleet.registry)["faithful"] is True


def test_a_failed_task_under_the_gate_threshold_fails_the_run_with_the_rate(engine):
    fleet, _ = phased_fleet(engine, threshold=0.8, healthy=[True], failing={"lint"})
    run_id = submit(fleet, "phased")
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "phase.gate_failed"
    output = run["error"]["details"]["output"]
    assert (output["phase"], output["success_rate"], output["required_success_rate"]) == ("development", 2 / 3, 0.8)
    assert output["succeeded"] == {"write": True, "lint": False, "review": True}
    dispatched = [e["node_id"] for e in events(fleet, run_id, "decision.task.dispatch")]
    assert dispatched == ["development-write", "development-lint", "development-review"]  # never monitoring


def test_the_feedback_loop_runs_twice_then_passes(engine):
    fleet, seen = phased_fleet(engine, threshold=0.5, healthy=[False, False, True])
    run_id = submit(fleet, "phased")
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "completed", run["error"]
    assert run["output"] == {"code": "v3", "healthy": True}
    assert seen == ["", "v1 unhealthy", "v2 unhealthy"]
    loops = [(g[1], g[2]) for g in gates(fleet, run_id) if g[0] == "monitoring--feedback"]
    assert loops == [(True, True), (True, True), (False, False)]
    assert types(fleet, run_id, "decision.workflow") == ["decision.workflow.complete"]


def test_a_feedback_loop_past_max_feedback_loops_fails_the_run(engine):
    fleet, seen = phased_fleet(engine, threshold=0.5, healthy=[False] * 5)
    run_id = submit(fleet, "phased")
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "loop.max_feedback_loops"
    assert run["error"]["details"]["node"] == "development"
    assert len(seen) == 3  # the first pass and 2 feedback loops


def test_the_builtin_asdlc_example_develops_skips_devops_and_monitors_with_the_real_workers(engine, tmp_path):
    settings = Settings(broker_url="memory://", artifacts_dir=tmp_path / "artifacts").checked()
    fleet = Fleet(engine, {**codegen.HANDLERS, **build_test.HANDLERS}, registry=Registry.builtin(),
                  settings=settings)
    run_id = submit(fleet, "asdlc", {"spec": "a function add(a, b) returning the sum of two numbers"})
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "completed", run["error"]
    assert run["output"]["success_rate"] == 1.0 and run["output"]["edits_path"].endswith("edits.json")
    dispatched = [e["node_id"] for e in events(fleet, run_id, "decision.task.dispatch")]
    assert dispatched == ["development-generate", "development-test", "monitoring-check"]
    assert gates(fleet, run_id) == [("development--gate", 1.0, True), ("devops", "skipped", True),
                                    ("monitoring--gate", 1.0, True), ("monitoring--feedback", False, False)]
    assert replay_run(engine, run_id, registry=fleet.registry)["faithful"] is True
