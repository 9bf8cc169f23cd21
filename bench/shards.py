"""``python -m bench shards``: the throughput scenario on fleets of 1, 2 and 4 shards (issue 11).

Each shard count gets a fresh ledger and a fresh cogo fleet (``COGO_SHARDS=N``: a brain and a dispatcher per
shard beside the same API and no-op workers as ``python -m bench run``) on a Redis database of its own, so
nothing one fleet left behind reaches the next. After a warm-up, the main bench's one-step-run throughput
scenario runs while every process's CPU time is read from /proc (psutil) before and after: runs/s, and the
CPU milliseconds per run of each kind of process — where a run's cost goes as the shards multiply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from bench import cogo_side, fleet
from bench.proc import NOOP_WORKER
from bus.db import make_engine
from ecosystem.launcher import Fleet

KINDS = {"cogo-orchestrator-brain": "brain", "cogo-executor-dispatcher": "dispatcher", NOOP_WORKER: "workers",
         "orchestrator-chat": "api"}
"""The kind each process of the bench's fleet is counted under."""


def warmup_runs(runs: int) -> int:
    """Runs before the measured window: a fresh fleet's first runs pay for connections and caches."""
    return max(5, runs // 10)


def run(*, ledger: str, counts: Sequence[int], runs: int, workers: int, broker_url: str, workdir: Path,
        log: Callable[[str], None]) -> dict:
    """Throughput and CPU per run at each shard count in ``counts``, one fresh fleet after the other, each on the
    next Redis database after ``broker_url``'s (which another fleet of the same run may have used)."""
    measured = []
    for offset, shards in enumerate(counts, start=1):
        log(f"[{ledger}] {shards} shard(s), {runs} runs …")
        measured.append(measure(ledger, shards, runs=runs, workers=workers,
                                broker_url=fleet.other_database(broker_url, offset),
                                workdir=workdir / f"shards-{shards}"))
    return {"ledger": ledger, "worker_processes": workers, "runs": runs, "warmup_runs": warmup_runs(runs),
            "counts": measured}


def measure(kind: str, shards: int, *, runs: int, workers: int, broker_url: str, workdir: Path) -> dict:
    """One fleet of ``shards`` shards on a fresh ``kind`` ledger: the throughput of ``runs`` one-step runs and
    the CPU each process, and the whole machine, spent over the window (from the first submission until the
    bench saw the last run end)."""
    with (fleet.ledger(kind, workdir) as url,
          fleet.cogo_fleet(broker_url=broker_url, database_url=url, workdir=workdir, workers=workers,
                           shards=shards) as cogo):
        engine = make_engine(url)
        client = cogo_side.Cogo(cogo.api_url, engine, api_key=cogo.api_key)
        try:
            cogo_side.throughput(client, warmup_runs(runs))
            before, busy_before, started = cpu_seconds(cogo), machine_busy_s(), time.monotonic()
            result = cogo_side.throughput(client, runs)
            after, busy_after, window_s = cpu_seconds(cogo), machine_busy_s(), time.monotonic() - started
        finally:
            client.close()
            engine.dispose()
        kinds = {c.label: KINDS[c.process.name] for c in cogo.children}
    # The machine's busy CPU and its load average say whether anything besides the fleet ran meanwhile.
    return {"shards": shards, **result, **cpu_per_run(before, after, kinds, runs), "window_s": round(window_s, 3),
            "machine_cpu_s": round(busy_after - busy_before, 3), "load_avg_1m_after": round(os.getloadavg()[0], 2)}


def cpu_seconds(running: Fleet) -> dict[str, float]:
    """User + system CPU seconds of each process of the fleet (and of any process it started), by label."""
    out = {}
    for child in running.children:
        process = psutil.Process(child.pid)
        out[child.label] = sum(sum(p.cpu_times()[:2]) for p in (process, *process.children(recursive=True)))
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core; user, system and interrupts): beside the
    fleet's own share, it tells whether the machine's cores, not the fleet, set the pace."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def cpu_per_run(before: dict[str, float], after: dict[str, float], kinds: dict[str, str], runs: int) -> dict:
    """CPU seconds of each process over the window, and per kind: process count, seconds, ms per run."""
    spent = {label: after[label] - before[label] for label in after}
    by_kind: dict[str, float] = {}
    count: dict[str, int] = {}
    for label, seconds in spent.items():
        by_kind[kinds[label]] = by_kind.get(kinds[label], 0.0) + seconds
        count[kinds[label]] = count.get(kinds[label], 0) + 1
    by_kind["total"] = sum(spent.values())
    return {"processes": count, "cpu_s": {k: round(v, 3) for k, v in by_kind.items()},
            "cpu_ms_per_run": {k: round(v / runs * 1000, 3) for k, v in by_kind.items()},
            "cpu_s_by_process": {label: round(v, 3) for label, v in spent.items()}}
