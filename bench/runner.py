"""The bench run: for each ledger, start the cogo fleet and run every scenario for cogo and plain Celery,
interleaved in rounds, while the plain-Celery workers stay up on the same Redis broker."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench import celery_side, cogo_side, fleet
from bench.stats import latency_ms, ratio
from bus.db import make_engine
from ecosystem.launcher import Fleet, redact


@dataclass(frozen=True)
class Sizes:
    """How much of each scenario to run."""

    latency_runs: int
    latency_round: int
    throughput_runs: int
    throughput_rounds: int
    ingress_requests: int
    ingress_seconds: float
    ingress_concurrency: int
    fanout_items: int
    growth_loops: int
    growth_fresh_runs: int
    handler_runs: int


FULL = Sizes(latency_runs=300, latency_round=50, throughput_runs=10_000, throughput_rounds=4,
             ingress_requests=3_000, ingress_seconds=15.0, ingress_concurrency=4, fanout_items=1_000,
             growth_loops=1_000, growth_fresh_runs=50, handler_runs=300)
QUICK = Sizes(latency_runs=20, latency_round=10, throughput_runs=60, throughput_rounds=2, ingress_requests=60,
              ingress_seconds=5.0, ingress_concurrency=2, fanout_items=20, growth_loops=10, growth_fresh_runs=3,
              handler_runs=10)


@dataclass
class Context:
    """What every scenario of one ledger needs."""

    cogo: cogo_side.Cogo
    plain: celery_side.Plain
    fleet: Fleet
    sizes: Sizes
    rss: list[dict]
    database_url: str = ""
    runs_done: int = 0

    def sample_rss(self, done_in_round: int = 0, *, phase: str = "throughput") -> None:
        """Record the RSS (MiB) of the brain and the dispatcher after ``runs_done + done_in_round`` runs."""
        sample = {"runs": self.runs_done + done_in_round, "phase": phase}
        for key, name in (("brain_mib", "cogo-orchestrator-brain"), ("dispatcher_mib", "cogo-executor-dispatcher")):
            sample[key] = round(psutil.Process(fleet.pid_of(self.fleet, name)).memory_info().rss / 2**20, 2)
        self.rss.append(sample)


def rounds(total: int, size: int) -> list[int]:
    """``total`` split into rounds of at most ``size``."""
    return [min(size, total - i) for i in range(0, total, size)]


def step_latency(ctx: Context) -> dict:
    """Chains of three no-op steps, cogo and Celery alternating in rounds."""
    gaps: dict[str, list[float]] = {"cogo": [], "celery": []}
    hops: dict[str, list[float]] = {h: [] for h in cogo_side.HOPS}
    failed = 0
    for n in rounds(ctx.sizes.latency_runs, ctx.sizes.latency_round):
        got = cogo_side.chain_latency(ctx.cogo, n)
        gaps["cogo"] += got["transitions_s"]
        for hop, values in got["hops_s"].items():
            hops[hop] += values
        failed += got["failed"]
        gaps["celery"] += celery_side.chain_latency(ctx.plain, n)["transitions_s"]
        ctx.runs_done += n
    out = {side: {**latency_ms(v), "runs": ctx.sizes.latency_runs} for side, v in gaps.items()}
    out["cogo"]["failed_runs"] = failed
    out["cogo"]["hops_p50_ms"] = {h: latency_ms(v)["p50_ms"] for h, v in hops.items()}
    out["ratio"] = {k: ratio(out["cogo"][f"{k}_ms"], out["celery"][f"{k}_ms"]) for k in ("p50", "p90", "p99")}
    return out


def throughput(ctx: Context) -> dict:
    """One-step runs vs no-op tasks, as fast as they can be submitted, alternating in rounds."""
    per_round = rounds(ctx.sizes.throughput_runs, -(-ctx.sizes.throughput_runs // ctx.sizes.throughput_rounds))
    cogo, celery = [], []
    ctx.sample_rss()
    for n in per_round:
        cogo.append(cogo_side.throughput(ctx.cogo, n, on_poll=ctx.sample_rss))
        ctx.runs_done += n
        ctx.sample_rss()
        celery.append(celery_side.throughput(ctx.plain, n))
    out = {"cogo": _total(cogo, "runs"), "celery": _total(celery, "tasks")}
    out["ratio"] = {"per_s": ratio(out["cogo"]["per_s"], out["celery"]["per_s"])}
    return out


def _total(results: list[dict], unit: str) -> dict:
    count = sum(r[unit] for r in results)
    seconds = sum(r["seconds"] for r in results)
    return {unit: count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1),
            "rounds_per_s": [r["per_s"] for r in results],
            "submit_per_s": round(min(r["submit_per_s"] for r in results), 1)}


def ingress(ctx: Context) -> dict:
    """The API's intake vs Celery's publishing, each from a load generator in a second process."""
    s = ctx.sizes
    out = {"cogo": cogo_side.ingress(ctx.cogo, count=s.ingress_requests, seconds=s.ingress_seconds,
                                     concurrency=s.ingress_concurrency),
           "celery": celery_side.ingress(ctx.plain, count=s.ingress_requests, seconds=s.ingress_seconds,
                                         concurrency=s.ingress_concurrency)}
    ctx.runs_done += out["cogo"]["requests"]
    out["ratio"] = {"per_s": ratio(out["cogo"]["per_s"], out["celery"]["per_s"]),
                    "p99": ratio(out["cogo"]["p99_ms"], out["celery"]["p99_ms"])}
    return out


def fanout(ctx: Context) -> dict:
    """A foreach of N no-op tasks and its join vs a chord of N."""
    out = {"celery": celery_side.fanout(ctx.plain, ctx.sizes.fanout_items),
           "cogo": cogo_side.fanout(ctx.cogo, ctx.sizes.fanout_items)}
    out["ratio"] = {"wall": ratio(out["cogo"].get("wall_s"), out["celery"].get("wall_s"))}
    return out


def growth(ctx: Context) -> dict:
    """Step cost as one run's history grows; RSS of the brain and the dispatcher over every run so far."""
    ctx.sample_rss(phase="after fan-out")
    loop = cogo_side.growth(ctx.cogo, ctx.sizes.growth_loops, fresh_runs=ctx.sizes.growth_fresh_runs)
    ctx.runs_done += 1 + ctx.sizes.growth_fresh_runs
    ctx.sample_rss(phase="after loop")
    buckets = loop["buckets"]
    first, last = (buckets[0], buckets[-1]) if buckets else ({}, {})
    return {"cogo": {**loop, "per_event_ratio": ratio(last.get("per_event_ms"), first.get("per_event_ms")),
                     "compared": [first.get("history"), last.get("history")],
                     "rss": thin(ctx.rss, 60), "rss_growth": rss_growth(ctx.rss)},
            "celery": {"status": "not_applicable", "reason": "plain Celery keeps no per-run history"}}


def thin(samples: list[dict], most: int) -> list[dict]:
    """At most ``most`` samples, evenly spaced, always keeping the first and the last."""
    if len(samples) <= most:
        return samples
    step = (len(samples) - 1) / (most - 1)
    return [samples[round(i * step)] for i in range(most)]


def handler_cost(ctx: Context) -> dict:
    """Each handler's own cost without the broker: time, SQL statements and JSON documents per call."""
    from bench.handlers import measure

    return {"cogo": measure(ctx.database_url, runs=ctx.sizes.handler_runs),
            "celery": {"status": "not_applicable", "reason": "measured in-process, cogo's handlers only"}}


def rss_growth(samples: list[dict]) -> dict:
    """RSS growth (%) over the throughput runs, from the first sample past 10% of them to the last; and the
    growth to the very last sample, after the wide fan-out and the long loop (a high-water mark, not a leak)."""
    steady = [s for s in samples if s["phase"] == "throughput"]
    if len(steady) < 2:
        return {}
    start, total = steady[0]["runs"], steady[-1]["runs"]
    base = next((s for s in steady if s["runs"] - start >= (total - start) * 0.1), steady[0])
    keys = ("brain_mib", "dispatcher_mib")
    return {**{k: round((steady[-1][k] - base[k]) / base[k] * 100, 2) for k in keys},
            "from_runs": base["runs"], "to_runs": total,
            "after_wide_runs_pct": {k: round((samples[-1][k] - base[k]) / base[k] * 100, 2) for k in keys}}


SCENARIOS: dict[str, Callable[[Context], dict]] = {
    "step_latency": step_latency, "throughput": throughput, "ingress": ingress, "fanout": fanout, "growth": growth,
    "handler_cost": handler_cost,
}


def run_ledger(kind: str, *, broker_url: str, plain: celery_side.Plain, workdir: Path, sizes: Sizes,
               workers: int, log: Callable[[str], None]) -> dict:
    """Every scenario on one ledger, with its own cogo fleet."""
    results: dict[str, dict] = {}
    with fleet.ledger(kind, workdir / kind) as url, \
            fleet.cogo_fleet(broker_url=broker_url, database_url=url, workdir=workdir / kind, workers=workers) as cogo:
        engine = make_engine(url)
        client = cogo_side.Cogo(cogo.api_url, engine, api_key=cogo.api_key)
        ctx = Context(client, plain, cogo, sizes, rss=[], database_url=url)
        try:
            for name, scenario in SCENARIOS.items():
                log(f"[{kind}] {name} …")
                started = time.monotonic()
                results[name] = scenario(ctx)
                results[name]["elapsed_s"] = round(time.monotonic() - started, 1)
        finally:
            ctx.cogo.close()
            engine.dispose()
    return results


def run(*, ledgers: list[str], quick: bool, workers: int, broker_url: str, workdir: Path,
        log: Callable[[str], None]) -> dict:
    """The whole bench: plain-Celery workers for the whole run, a cogo fleet per ledger."""
    sizes = QUICK if quick else FULL
    started, load_before = time.time(), os.getloadavg()
    with fleet.Processes(workdir) as procs:
        fleet.start_celery(procs, broker_url=broker_url, workers=workers)
        plain = celery_side.Plain(broker_url, workers)
        try:
            plain.reports(reset=True, timeout_s=60)
            results = {kind: run_ledger(kind, broker_url=broker_url, plain=plain, workdir=workdir, sizes=sizes,
                                        workers=workers, log=log) for kind in ledgers}
        finally:
            plain.close()
    return {"mode": "quick" if quick else "full", "started_at": started, "duration_s": round(time.time() - started, 1),
            "load_avg": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
            "config": {"worker_processes": workers, "broker": redact(broker_url), **asdict(sizes)}, "ledgers": results}
