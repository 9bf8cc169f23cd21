"""Planning alone — no database, no broker, no clock: how fast the pure planner decides.

``python bench/bench_planning.py [--quick]`` prints JSON:

- ``task_loop``: decisions per second over a long loop of task completions;
- ``fanout_1000``: a 1,000-way ``foreach`` — the fan-out, every arrival at the join, and the join firing;
- ``history_growth``: the cost of planning one event after 10, 100, 1,000 and 10,000 events of history
  (it should stay flat: the state holds only what is open, never the history).

Each event is planned against the state the previous plan led to (its ``next_state``); ``plan()`` is timed
whole, the state transition and the changes phase 1 would write included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator import events as ev  # noqa: E402
from coordinator.definitions import parse_definition  # noqa: E402
from coordinator.planning import plan  # noqa: E402
from coordinator.state import RunInfo, WorkflowState  # noqa: E402

RUN_ID = "00000000-0000-4000-8000-00000000be9c"
NOW = 1_800_000_000.0


def cycle_definition(nodes: int = 10, max_loops: int = 1000):
    """``n0 → n1 → … → n<nodes-1> → n0``: every completion plans a transition and a dispatch."""
    body = {f"n{i}": {"kind": "task", "route": {"service": "t", "role": "work"}, "agent": {"agent_id": "w"},
                      "input": {"i": f"`{i}`"}, "output": f"n{i}", "next": f"n{(i + 1) % nodes}"}
            for i in range(nodes)}
    return parse_definition({"name": "cycle", "start": "n0", "max_loops": max_loops, "nodes": body})


def fanout_definition():
    """A foreach over ``input.items`` with one task per branch, joined on ``all``."""
    return parse_definition({"name": "fan", "start": "split", "nodes": {
        "split": {"kind": "foreach", "items": "input.items", "body": "work", "join": "merge"},
        "work": {"kind": "task", "route": {"service": "t", "role": "work"}, "agent": {"agent_id": "w"},
                 "input": {"x": "item"}, "output": "out", "next": "merge"},
        "merge": {"kind": "join", "mode": "all", "output": "results", "next": "done"},
        "done": {"kind": "end", "output": {"n": "length(context.results)"}}}})


def initial(definition, payload=None) -> WorkflowState:
    run = RunInfo(id=RUN_ID, tenant="bench", intent=definition.name, workflow=definition.name,
                  workflow_version=1, status="pending", input=payload or {}, root_run_id=RUN_ID)
    return WorkflowState(run=run, definition=definition)


class Driver:
    """Feeds events to the planner one by one and times each ``plan()``."""

    def __init__(self, state: WorkflowState):
        self.state = state
        self.plan_s: list[float] = []
        self.decisions = 0
        self.seq = 0

    def step(self, event_type, **fields):
        self.seq += 1
        event = event_type(id=f"e{self.seq}", run_id=RUN_ID, **fields)
        t0 = time.perf_counter()
        planned = plan(self.state, event, now=NOW + self.seq)
        t1 = time.perf_counter()
        self.state = planned.next_state
        self.plan_s.append(t1 - t0)
        self.decisions += len(planned.decisions)
        return planned

    def complete_next(self, output=None):
        token = next(t for t in self.state.tokens.values() if t.status == "dispatched")
        return self.step(ev.TaskCompleted, token_id=token.id, assignment_id=token.assignment_id,
                         output=output if output is not None else {"ok": True})


def bench_task_loop(events: int) -> dict:
    driver = Driver(initial(cycle_definition()))
    driver.step(ev.Start)
    for _ in range(events):
        driver.complete_next()
    total = sum(driver.plan_s)
    return {"events": events + 1, "decisions": driver.decisions, "plan_s": round(total, 4),
            "decisions_per_s": round(driver.decisions / total), "events_per_s": round(len(driver.plan_s) / total),
            "p50_event_us": round(statistics.median(driver.plan_s) * 1e6, 1)}


def bench_fanout(width: int) -> dict:
    driver = Driver(initial(fanout_definition(), {"items": list(range(width))}))
    spawn = driver.step(ev.Start)
    arrivals = []
    for _ in range(width):
        driver.complete_next({"v": 1})
        arrivals.append(driver.plan_s[-1])
    assert driver.state.run.status == "completed", driver.state.run.status
    total = sum(driver.plan_s)
    return {"width": width, "decisions": driver.decisions, "fan_out_decisions": len(spawn.decisions),
            "fan_out_ms": round(driver.plan_s[0] * 1e3, 2),
            "arrival_p50_us": round(statistics.median(arrivals[:-1]) * 1e6, 1),
            "arrival_max_us": round(max(arrivals[:-1]) * 1e6, 1),
            "join_fire_ms": round(arrivals[-1] * 1e3, 2),
            "total_plan_s": round(total, 4), "decisions_per_s": round(driver.decisions / total)}


def bench_history(points: list[int], window: int = 50) -> dict:
    driver = Driver(initial(cycle_definition()))
    driver.step(ev.Start)
    result = {}
    for point in points:
        while len(driver.plan_s) < point:
            driver.complete_next()
        before = len(driver.plan_s)
        for _ in range(window):
            driver.complete_next()
        sample = driver.plan_s[before:]
        result[str(point)] = {"p50_us": round(statistics.median(sample) * 1e6, 1),
                              "mean_us": round(statistics.fmean(sample) * 1e6, 1)}
    base, last = result[str(points[0])]["p50_us"], result[str(points[-1])]["p50_us"]
    return {"window": window, "per_event": result, "ratio_last_to_first": round(last / base, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    loop_events, width = (1_000, 100) if args.quick else (5_000, 1_000)
    points = [10, 100, 1_000] if args.quick else [10, 100, 1_000, 9_900]
    report = {
        "benchmark": "planning", "python": platform.python_version(), "cpus": os.cpu_count(),
        "task_loop": bench_task_loop(loop_events),
        "fanout_1000" if not args.quick else "fanout": bench_fanout(width),
        "history_growth": bench_history(points),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
