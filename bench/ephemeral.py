"""The cost of an ephemeral worker: sequential one-task runs on a long-running worker, then on an ephemeral one.

``python -m bench ephemeral [--runs 50] [--ledger sqlite|postgres]`` starts one fleet per mode (API, brain,
dispatcher, reclaimer and a no-op worker, ``COGO_EPHEMERAL`` naming it in the second) on the same broker and
ledger kind, submits ``runs`` runs of ``bench-one`` one after the other, and prints JSON: each run's latency
(``ended_at - created_at``, the ledger's clock) as p50/p90 per mode and the difference, which is the overhead one
fresh process adds to an assignment.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench import fleet as bench_fleet
from bench.noop_worker import HANDLERS
from bus.settings import Settings
from coordinator.client import Client
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES, Process

WORKER = Process("bench-noop-worker", "celery", "bench.ephemeral:worker", "bench.noop, ephemeral or not",
                 routes=(("bench", "noop"),))
CORE = ("orchestrator-chat", "cogo-orchestrator-brain", "cogo-executor-dispatcher", "cogo-bus-reclaimer")
WORKFLOWS = Path(__file__).resolve().parent / "workflows"


def worker(settings: Settings, name: str) -> None:
    """The no-op worker, served as the table's workers are (ephemeral when ``COGO_EPHEMERAL`` names it)."""
    from ecosystem.entrypoints import serve_worker

    serve_worker(settings, name, HANDLERS)


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(settings: Settings, runs: int) -> list[float]:
    """Start the fleet, run ``runs`` one-task runs one after the other; each run's latency in ms."""
    with Fleet(settings, only=[*CORE, WORKER.name], processes=(*PROCESSES, WORKER), free_ports=True,
               console=Console(quiet=True), show_logs=False, env={"PYTHONUNBUFFERED": "1"}) as running:
        with Client(running.api_url, api_key=running.api_key) as client:
            client.wait(client.submit("bench-one", tenant="bench"), timeout_s=120)  # warm-up, not counted
            latencies = []
            for _ in range(runs):
                run = client.wait(client.submit("bench-one", tenant="bench"), timeout_s=120, poll_s=0.02)
                if run["status"] != "completed":
                    raise RuntimeError(f"bench run {run['id']} ended {run['status']}: {run.get('error')}")
                latencies.append((run["ended_at"] - run["created_at"]) * 1000)
    return latencies


def run(*, runs: int, ledger: str, broker_url: str, workdir: Path, log: Callable[[str], None]) -> dict:
    """Both modes on fresh ledgers of kind ``ledger``; the JSON the CLI prints."""
    result: dict = {"runs": runs, "ledger": ledger, "modes": {}}
    for mode, ephemeral in (("long-running", ""), ("ephemeral", WORKER.name)):
        log(f"{mode}: {runs} sequential one-task runs")
        with bench_fleet.ledger(ledger, workdir / mode / "ledger") as url:
            settings = Settings(home=workdir / mode, broker_url=broker_url, database_url=url,
                                workflows_dir=WORKFLOWS, log_level="WARNING", ephemeral=ephemeral,
                                rate_per_s=1000.0, rate_burst=1000).checked()
            latencies = measure(settings, runs)
        result["modes"][mode] = {"p50_ms": round(statistics.median(latencies), 1),
                                 "p90_ms": round(quantile(latencies, 0.9), 1),
                                 "max_ms": round(max(latencies), 1)}
    long, eph = result["modes"]["long-running"], result["modes"]["ephemeral"]
    result["overhead_per_assignment_ms"] = {"p50": round(eph["p50_ms"] - long["p50_ms"], 1),
                                            "p90": round(eph["p90_ms"] - long["p90_ms"], 1)}
    return result


def main(runs: int, ledger: str) -> dict:
    """Run the bench on a Redis of its own in a temporary directory."""
    import sys

    with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, bench_fleet.own_redis(Path(tmp)) as broker:
        return run(runs=runs, ledger=ledger, broker_url=broker, workdir=Path(tmp),
                   log=lambda line: print(line, file=sys.stderr, flush=True))
