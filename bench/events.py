"""The cost of Celery task events (``COGO_TASK_EVENTS``, what Flower's Tasks page needs).

Two identical cogo fleets run side by side, one with task events on and one with them off, each on a
Redis database of its own and a ledger of its own; the same step-latency and throughput scenarios as
``python -m bench run`` go to one and then the other in alternating rounds (the side that goes first
alternates too), so drift on a shared machine hits both alike. Nobody subscribes to the events here:
this is the cost the workers pay to emit them (a monitor such as Flower adds its own process).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench import cogo_side, fleet
from bench.runner import FULL, QUICK, rounds
from bench.stats import latency_ms, ratio
from bus.db import make_engine

MODES = {"on": True, "off": False}


def run(*, ledger: str, quick: bool, workers: int, broker_url: str, workdir: Path,
        log: Callable[[str], None], throughput_runs: int | None = None) -> dict:
    """Step latency and throughput with task events on and off, interleaved; the numbers and their ratio."""
    sizes = QUICK if quick else FULL
    if throughput_runs:
        sizes = replace(sizes, throughput_runs=throughput_runs)
    brokers = {"on": broker_url, "off": fleet.other_database(broker_url)}
    with contextlib.ExitStack() as stack:
        sides = {}
        for mode, events in MODES.items():
            url = stack.enter_context(fleet.ledger(ledger, workdir / mode))
            running = stack.enter_context(fleet.cogo_fleet(broker_url=brokers[mode], database_url=url,
                                                           workdir=workdir / mode, workers=workers,
                                                           task_events=events))
            engine = make_engine(url)
            stack.callback(engine.dispose)
            sides[mode] = cogo_side.Cogo(running.api_url, engine, api_key=running.api_key)
            stack.callback(sides[mode].close)
        log(f"[{ledger}] step latency, events on/off …")
        latency = _latency(sides, sizes.latency_runs, sizes.latency_round)
        log(f"[{ledger}] throughput, events on/off …")
        speed = _throughput(sides, sizes.throughput_runs, sizes.throughput_rounds)
    return {"mode": "quick" if quick else "full", "ledger": ledger, "worker_processes": workers,
            "latency_runs": sizes.latency_runs, "throughput_runs": sizes.throughput_runs,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()], "finished_at": time.time(),
            "step_latency": latency, "throughput": speed}


def _order(i: int) -> list[str]:
    return ["on", "off"] if i % 2 == 0 else ["off", "on"]


def _latency(sides: dict[str, cogo_side.Cogo], runs: int, per_round: int) -> dict:
    gaps: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i, n in enumerate(rounds(runs, per_round)):
        for mode in _order(i):
            gaps[mode] += cogo_side.chain_latency(sides[mode], n)["transitions_s"]
    out = {mode: {**latency_ms(values), "runs": runs} for mode, values in gaps.items()}
    out["on_over_off"] = {k: ratio(out["on"][f"{k}_ms"], out["off"][f"{k}_ms"]) for k in ("p50", "p90", "p99")}
    return out


def _throughput(sides: dict[str, cogo_side.Cogo], runs: int, rounds_: int) -> dict:
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for i, n in enumerate(rounds(runs, -(-runs // rounds_))):
        for mode in _order(i):
            results[mode].append(cogo_side.throughput(sides[mode], n))
    out = {}
    for mode, parts in results.items():
        count, seconds = sum(p["runs"] for p in parts), sum(p["seconds"] for p in parts)
        out[mode] = {"runs": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1),
                     "rounds_per_s": [p["per_s"] for p in parts]}
    out["on_over_off"] = {"per_s": ratio(out["on"]["per_s"], out["off"]["per_s"])}
    return out
