"""Fair shares weighted by spend: one tenant floods the fleet, another submits a few runs.

``python -m bench fairness [--flood 1000] [--small 10] [--ledger sqlite|postgres]`` starts a fleet whose
bottleneck is its workers (two ``bench.sleep`` workers whose task takes ``--sleep-ms``, 200 by default, as a model
call would), and measures, on fresh ledgers:

- ``idle``: the small tenant's runs on an otherwise idle fleet (their latency, ``ended_at - created_at``);
- ``fifo``: the same runs submitted while the flood tenant's runs wait, with no policy table (admission sends
  everything to the worker queue, which serves it first come, first served);
- ``fair``: the same with ``routes: {bench.sleep: {maxConcurrent: 3}}`` (``--slots``): the route holds three
  assignments in flight (two running, one queued behind them), the rest wait in the ledger, and a free slot goes
  to the tenant with the lower spend-weighted share.

The small runs are submitted once the brain has planned every flood run and the dispatcher has asked about every
flood assignment once (each waits for a worker, or in the ledger for a slot): what is measured is admission's
order in the steady state of a flood, not the time the brain and the dispatcher take to absorb a burst of 1,000
intents, which is reported beside it (``flood_planned_s``, ``flood_admission_asked_s``: seconds from the flood's
first submission). Both queues are first come, first served; a burst delays everything behind it by that much.

It prints JSON: per scenario the small runs' latency p50/max and the flood's throughput (runs per second from its
first submission to its last run's end). The targets (issue 12): the small runs finish within 2 × their idle
latency, and the flood's throughput drops by no more than 10 % against ``fifo``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from sqlalchemy import create_engine, func, select

from bench import fleet as bench_fleet
from bench.cogo_side import post_many
from bus.schema import agent_messages as m
from bus.settings import Settings
from coordinator.schema import runs as runs_table
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES, Process
from workers.handler import WorkContext, WorkResult

SLEEP_MS = 200
"""How long a ``bench.sleep`` task takes (``COGO_BENCH_SLEEP_MS`` in the workers' environment)."""
WORKER = Process("bench-sleep-worker", "celery", "bench.fairness:worker", "bench.sleep: a task that sleeps",
                 routes=(("bench", "sleep"),), replicas=2)
CORE = ("orchestrator-chat", "cogo-orchestrator-brain", "cogo-executor-dispatcher", "cogo-bus-reclaimer")
WORKFLOWS = Path(__file__).resolve().parent / "workflows"
SLOTS = 3
"""The route's limit in the ``fair`` scenario: its two workers' capacity and one message queued behind them."""
ENDED = ("completed", "failed", "cancelled")


def sleepy(_ctx: WorkContext, _payload: dict) -> WorkResult:
    """Take ``COGO_BENCH_SLEEP_MS``, like a model call."""
    time.sleep(float(os.environ.get("COGO_BENCH_SLEEP_MS", SLEEP_MS)) / 1000)
    return WorkResult(output={})


def worker(settings: Settings, name: str) -> None:
    """The ``bench.sleep`` worker process."""
    from workers.runtime import serve

    serve(settings, name=name, handlers={("bench", "sleep"): sleepy})


def _ended(engine, tenant: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(runs_table)
                            .where(runs_table.c.tenant == tenant, runs_table.c.status.in_(ENDED))).scalar()


def _wait(engine, tenant: str, count: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while _ended(engine, tenant) < count:
        if time.time() > deadline:
            raise RuntimeError(f"{tenant}: only {_ended(engine, tenant)} of {count} runs ended in {timeout_s:.0f} s")
        time.sleep(0.1)


def _latencies(engine, tenant: str) -> list[float]:
    with engine.connect() as conn:
        rows = conn.execute(select(runs_table.c.status, runs_table.c.created_at, runs_table.c.ended_at)
                            .where(runs_table.c.tenant == tenant)).all()
    if any(r.status != "completed" for r in rows):
        raise RuntimeError(f"{tenant}: not every run completed: {sorted({r.status for r in rows})}")
    return [(r.ended_at - r.created_at) * 1000 for r in rows]


def _planned(engine, tenant: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m).where(m.c.tenant == tenant,
                                                                       m.c.kind == "assignment")).scalar()


def _unseen(engine, tenant: str) -> int:
    """The tenant's assignments the dispatcher has not asked about yet (queued, waiting for nothing)."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m).where(
            m.c.tenant == tenant, m.c.kind == "assignment", m.c.status == "queued", m.c.waiting_for.is_(None))).scalar()


def scenario(settings: Settings, *, flood: int, small: int, sleep_ms: float) -> dict:
    """One fleet: warm up, then (with ``flood`` > 0) flood, wait until the brain planned every flood run (its
    assignments wait for the workers), and submit the small runs."""
    with Fleet(settings, only=[*CORE, WORKER.name], processes=(*PROCESSES, WORKER), free_ports=True,
               console=Console(quiet=True), show_logs=False,
               env={"PYTHONUNBUFFERED": "1", "COGO_BENCH_SLEEP_MS": str(sleep_ms)}) as running:
        engine = create_engine(settings.database_url)
        post_many(running.api_url, "warm", "bench-sleep", 4, clients=2, api_key=running.api_key)
        _wait(engine, "warm", 4, 60)
        out: dict = {}
        start = time.time()
        if flood:
            post_many(running.api_url, "flood", "bench-sleep", flood, clients=4, api_key=running.api_key)
            deadline = time.time() + 300
            while _planned(engine, "flood") < flood and time.time() < deadline:
                time.sleep(0.1)
            out["flood_planned_s"] = round(time.time() - start, 2)
            while _unseen(engine, "flood") and time.time() < deadline:
                time.sleep(0.1)
            out["flood_admission_asked_s"] = round(time.time() - start, 2)
            out["flood_ended_before_small"] = _ended(engine, "flood")
        post_many(running.api_url, "small", "bench-sleep", small, clients=2, api_key=running.api_key)
        _wait(engine, "small", small, 600)
        lat = _latencies(engine, "small")
        out["small"] = {"runs": small, "p50_ms": round(statistics.median(lat), 1), "max_ms": round(max(lat), 1)}
        if flood:
            _wait(engine, "flood", flood, 600)
            with engine.connect() as conn:
                last = conn.execute(select(func.max(runs_table.c.ended_at))
                                    .where(runs_table.c.tenant == "flood")).scalar()
            out["flood"] = {"runs": flood, "seconds": round(last - start, 2), "per_s": round(flood / (last - start), 1)}
        engine.dispose()
    return out


def run(*, flood: int, small: int, ledger: str, broker_url: str, workdir: Path, log: Callable[[str], None],
        sleep_ms: float = SLEEP_MS, slots: int = SLOTS) -> dict:
    """The three scenarios on fresh ledgers of kind ``ledger``; the JSON the CLI prints."""
    result: dict = {"flood": flood, "small": small, "ledger": ledger, "sleep_ms": sleep_ms, "workers": 2,
                    "slots": slots, "scenarios": {}}
    fair = f"routes: {{bench.sleep: {{maxConcurrent: {slots}}}}}\n"
    for name, table, n in (("idle", "", 0), ("fifo", "", flood), ("fair", fair, flood)):
        log(f"{name}: flood {n}, small {small}")
        home = workdir / name
        home.mkdir(parents=True)
        (home / "policy.yaml").write_text(table)
        with bench_fleet.ledger(ledger, home / "ledger") as url:
            settings = Settings(home=home, broker_url=broker_url, database_url=url, workflows_dir=WORKFLOWS,
                                log_level="WARNING", rate_per_s=10_000.0, rate_burst=10_000).checked()
            result["scenarios"][name] = scenario(settings, flood=n, small=small, sleep_ms=sleep_ms)
    s = result["scenarios"]
    idle = s["idle"]["small"]
    result["fair_small_vs_idle"] = {"p50": round(s["fair"]["small"]["p50_ms"] / idle["p50_ms"], 2),
                                    "max": round(s["fair"]["small"]["max_ms"] / idle["max_ms"], 2)}
    result["fifo_small_vs_idle"] = {"p50": round(s["fifo"]["small"]["p50_ms"] / idle["p50_ms"], 2),
                                    "max": round(s["fifo"]["small"]["max_ms"] / idle["max_ms"], 2)}
    result["fair_throughput_vs_fifo"] = round(s["fair"]["flood"]["per_s"] / s["fifo"]["flood"]["per_s"], 3)
    return result


def main(flood: int, small: int, ledger: str, sleep_ms: float = SLEEP_MS, slots: int = SLOTS) -> dict:
    """Run the bench on a Redis of its own in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, bench_fleet.own_redis(Path(tmp)) as broker:
        return run(flood=flood, small=small, ledger=ledger, broker_url=broker, workdir=Path(tmp), sleep_ms=sleep_ms,
                   slots=slots, log=lambda line: print(line, file=sys.stderr, flush=True))
