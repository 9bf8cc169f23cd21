"""Record the golden histories: ``python -m tests.golden.record`` (then review the diff and commit).

Each scenario runs a workflow through the real brain, dispatcher and worker runtime (the recording-bus
harness, on a throwaway SQLite ledger, with deterministic handlers), reads the events the brain applied
back from the ledger, and writes them with the decisions the planner made for each. The golden test
replays the events through the planner and fails loudly if any decision changes.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.db import make_engine
from bus.errors import WorkFailed
from bus.migrate import upgrade
from coordinator.definitions import Registry
from coordinator.replay import fidelity, initial_state, recorded_events, replay_events
from coordinator.schema import runs
from tests.support.harness import Fleet, registry_of, settle, submit
from workers.handler import WorkResult

HERE = Path(__file__).parent


@dataclass
class Scenario:
    """A workflow, its handlers, its input, and what a person or the world does while it runs."""

    name: str
    description: str
    workflow: str
    definitions: tuple[str, ...]
    handlers: dict[tuple[str, str], Callable]
    payload: dict[str, Any] = field(default_factory=dict)
    act: Callable[[Fleet, str], None] | None = None


def _counting(outputs: list[dict[str, Any]]):
    calls = iter(outputs)
    return lambda ctx, payload: WorkResult(output=next(calls))


def _signal(fleet: Fleet, run_id: str) -> None:
    from coordinator import commands

    fleet.drain()
    with fleet.engine.begin() as conn:
        delivery = commands.signal(conn, run_id, "go", {"by": "ops"}, now=fleet.clock(), shards=1)
    fleet.publisher.send([delivery])


def _decide(approved: bool):
    def act(fleet: Fleet, run_id: str) -> None:
        from coordinator import commands

        settle(fleet)
        with fleet.engine.begin() as conn:
            [approval] = commands.list_approvals(conn, run_id=run_id)
            _, delivery = commands.decide_approval(conn, approval["id"], approved=approved, by="ana",
                                                   comment="no" if not approved else "ok", now=fleet.clock(),
                                                   shards=1)
        fleet.publisher.send([delivery])
    return act


def _cancel(fleet: Fleet, run_id: str) -> None:
    from coordinator import commands

    settle(fleet)
    with fleet.engine.begin() as conn:
        delivery = commands.cancel(conn, run_id, reason="changed my mind", now=fleet.clock(), shards=1)
    fleet.publisher.send([delivery])


def _never_done(ctx, payload):
    raise WorkFailed(f"attempt {ctx.attempt} failed", retryable=True)


def _flaky(ctx, payload):
    if ctx.attempt < 3:
        raise WorkFailed(f"attempt {ctx.attempt} failed", retryable=True)
    return WorkResult(output={"attempt": ctx.attempt})


def _broken(ctx, payload):
    raise WorkFailed("permanently broken", retryable=False, code="work.broken")


GATEKEEPER = """
name: gatekeeper
start: ask
nodes:
  ask: {kind: approval, prompt: "Ship it?", timeout_ms: 600000, approve: ship, reject: drop, on_timeout: drop}
  ship: {kind: end, output: {shipped: "`true`", by: context.ask.by}}
  drop: {kind: end, output: {shipped: "`false`"}}
"""

SCENARIOS = [
    Scenario("codegen-feedback-loop", "codegen → build-test → gate fails once, loops with feedback, passes, promotes",
             "codegen-build-test", (),
             {("codegen", "generate"): lambda ctx, p: WorkResult(output={
                 "edits_path": f"/edits/{ctx.attempt}", "files": ["a.py"], "summary": f"fb={p.get('feedback')}"}),
              ("code", "build-test"): _counting([
                  {"report_path": "/r1", "build_ok": True, "passed": 1, "failed": 1, "success_rate": 0.5,
                   "feedback": "test_b failed"},
                  {"report_path": "/r2", "build_ok": True, "passed": 2, "failed": 0, "success_rate": 1.0,
                   "feedback": ""}])},
             {"spec": "add two numbers"}),
    Scenario("foreach-join-gate", "foreach over 3 specs, two tasks per branch, join all, gate on the mean",
             "demo", (),
             {("codegen", "generate"): lambda ctx, p: WorkResult(output={
                 "edits_path": f"/edits/{p['spec']}", "files": [f"{p['spec']}.py"], "summary": p["spec"]}),
              ("code", "build-test"): lambda ctx, p: WorkResult(output={
                  "report_path": p["edits_path"] + "/report", "success_rate": 0.5 if "b" in p["edits_path"] else 1.0,
                  "passed": 1, "failed": 0, "build_ok": True})},
             {"specs": ["a", "b", "c"]}),
    Scenario("any-join-cancels", "parallel of 3 joined on any: the first arrival fires, the rest are cancelled",
             "race", ("""
name: race
start: split
nodes:
  split: {kind: parallel, branches: [fast, slow, slower], join: first}
  fast: {kind: task, route: {service: t, role: fast}, agent: {agent_id: w}, output: out, next: first}
  slow: {kind: task, route: {service: t, role: slow}, agent: {agent_id: w}, output: out, next: first}
  slower: {kind: task, route: {service: t, role: slow}, agent: {agent_id: w}, output: out, next: first}
  first: {kind: join, mode: any, output: winner, next: done}
  done: {kind: end, output: {winner: "context.winner[0].branch"}}
""",),
             {("t", "fast"): lambda ctx, p: WorkResult(output={"speed": "fast"}),
              ("t", "slow"): lambda ctx, p: WorkResult(output={"speed": "slow"})}),
    Scenario("approval-approved", "a run waits for a person, who approves through the API",
             "gatekeeper", (GATEKEEPER,), {}, act=_decide(True)),
    Scenario("wait-then-signal", "a durable timer, then a named external event",
             "waits", ("""
name: waits
start: pause
nodes:
  pause: {kind: wait, duration_ms: 30000, next: hear}
  hear: {kind: wait, event: go, output: go, next: done}
  done: {kind: end, output: {go: context.go}}
""",), {}, act=_signal),
    Scenario("retries-then-rescue", "a task retried to success, then a broken one routed to on_failure",
             "rescue", ("""
name: rescue
start: flaky
nodes:
  flaky: {kind: task, route: {service: t, role: flaky}, agent: {agent_id: w},
          retry: {maximum_attempts: 3, initial_interval_ms: 100}, output: flaky, next: broken}
  broken: {kind: task, route: {service: t, role: broken}, agent: {agent_id: w}, on_failure: rescued, next: done}
  rescued: {kind: end, output: {rescued: "`true`", attempts: context.flaky.attempt}}
  done: {kind: end}
""",), {("t", "flaky"): _flaky, ("t", "broken"): _broken}),
    Scenario("m-of-n-join", "parallel of 3 joined on 2 of 3: the second arrival fires the join, the third is cancelled",
             "quorum", ("""
name: quorum
start: split
nodes:
  split: {kind: parallel, branches: [a, b, c], join: two}
  a: {kind: task, route: {service: t, role: vote}, agent: {agent_id: w}, output: vote, next: two}
  b: {kind: task, route: {service: t, role: vote}, agent: {agent_id: w}, output: vote, next: two}
  c: {kind: task, route: {service: t, role: late}, agent: {agent_id: w}, output: vote, next: two}
  two: {kind: join, mode: m_of_n, m: 2, output: votes, next: done}
  done: {kind: end, output: {votes: "length(context.votes)"}}
""",),
             {("t", "vote"): lambda ctx, p: WorkResult(output={"yes": True}),
              ("t", "late"): lambda ctx, p: WorkResult(output={"yes": False})}),
    Scenario("subworkflow", "a parent starts a child run, waits for it and maps its output",
             "parent", ("""
name: parent
start: down
nodes:
  down: {kind: subworkflow, workflow: child, input_mapping: {n: input.n}, output_mapping: {got: output}, next: done}
  done: {kind: end, output: {got: context.got}}
""", """
name: child
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, input: {n: input.n}, output: out,
         next: done}
  done: {kind: end, output: {n: context.out.n}}
"""), {("t", "work"): lambda ctx, p: WorkResult(output={"n": p["n"] * 2})}, {"n": 21}),
    Scenario("cancel", "a run waiting on a person is cancelled: its tokens and approval go with it",
             "cancellable", ("""
name: cancellable
start: ask
nodes:
  ask: {kind: approval, prompt: "Go?", timeout_ms: 600000, approve: done, reject: done, on_timeout: done}
  done: {kind: end}
""",), {}, act=_cancel),
    Scenario("task-timeout", "a task whose retries outlast its node timeout: the timeout fails it to on_failure",
             "slowpoke", ("""
name: slowpoke
start: work
nodes:
  work: {kind: task, route: {service: t, role: never}, agent: {agent_id: w}, timeout_ms: 1000,
         retry: {maximum_attempts: 5, initial_interval_ms: 60000, maximum_interval_ms: 60000}, on_failure: gave_up,
         next: done}
  gave_up: {kind: end, output: {timed_out: "`true`"}}
  done: {kind: end}
""",), {("t", "never"): _never_done}),
    Scenario("approval-rejected", "a person rejects: the run takes the reject path",
             "gatekeeper", (GATEKEEPER,), {}, act=_decide(False)),
    Scenario("approval-timeout", "nobody answers: the approval times out and the run takes on_timeout",
             "gatekeeper", (GATEKEEPER,), {}),
]


def record(scenario: Scenario, workdir: Path, *, batched: bool = False) -> dict[str, Any]:
    """Run one scenario and return its golden document (``batched``: admissions delivered as the publisher
    groups them)."""
    engine = make_engine(f"sqlite:///{workdir / (scenario.name + '.db')}")
    upgrade(engine)
    registry = registry_of(*scenario.definitions, builtin=True)
    fleet = Fleet(engine, scenario.handlers, registry=registry, batched=batched)
    run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cogo:golden:{scenario.name}"))
    submit(fleet, scenario.workflow, scenario.payload, run_id=run_id)
    if scenario.act:
        scenario.act(fleet, run_id)
    fleet.drain()
    return golden_document(scenario, engine, registry, run_id)


def golden_document(scenario: Scenario, engine, registry: Registry, run_id: str) -> dict[str, Any]:
    """Read a finished run back from the ledger and replay it into a golden document."""
    from sqlalchemy import select

    with engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one()
        definition = registry.get(row["workflow"], row["workflow_version"])
        catalog = registry.catalog(definition)
        recorded = recorded_events(conn, run_id)
        steps = replay_events(initial_state(row, definition, catalog), recorded)
        check = fidelity(conn, run_id, steps)
    if not check["faithful"]:
        raise AssertionError(f"{scenario.name}: replay does not reproduce the recorded trace: {check}")
    source = {"definition_yaml": next(d for d in scenario.definitions if f"name: {row['workflow']}\n" in d)} \
        if scenario.definitions else {"definition_file": f"{row['workflow']}.yaml"}
    return {
        "name": scenario.name, "description": scenario.description, "status": row["status"],
        **source,
        "catalog": {k: list(v) for k, v in catalog.items()},
        "run": {k: row[k] for k in ("id", "tenant", "intent", "workflow", "workflow_version", "input",
                                    "parent_run_id", "parent_token_id", "root_run_id", "depth", "budget")},
        "steps": [{"event": s.recorded.describe(), "now": s.recorded.now, "decisions": s.decisions(),
                   "events": s.introspection()} for s in steps],
    }


def main() -> None:
    """Re-record every golden file."""
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in SCENARIOS:
            doc = record(scenario, Path(tmp))
            path = HERE / f"{scenario.name}.json"
            path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            print(f"{path.name}: {len(doc['steps'])} events, run {doc['status']}")


if __name__ == "__main__":
    main()
