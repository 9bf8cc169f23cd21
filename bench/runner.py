"""The bench run: for each ledger, start the cogo fleet and the DBOS workers (on a system database of the same
kind) and run every scenario for cogo, plain Celery and DBOS, interleaved in rounds, while the plain-Celery
workers stay up on the same Redis broker."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bench import celery_side, cogo_side, dbos_side, fleet, shards
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
    large_fanout_items: int
    large_fanout_timeout_s: float
    dbos_idle_window_s: float
    growth_loops: int
    growth_fresh_runs: int
    handler_runs: int
    shard_counts: tuple[int, ...]
    """The shard counts of the shards scenario (none: not run), on the ledgers of ``SHARD_LEDGERS``."""
    shard_runs: int


# The wide fan-out's limit fits cogo's 10,000 items with room to spare (2.3 min on SQLite, 8 min on PostgreSQL on 2
# cores at 0ddd747; 8 and 17 min at 189cff3) and DBOS's (< 3 min).
FULL = Sizes(latency_runs=300, latency_round=50, throughput_runs=10_000, throughput_rounds=4,
             ingress_requests=3_000, ingress_seconds=15.0, ingress_concurrency=4, fanout_items=1_000,
             large_fanout_items=10_000, large_fanout_timeout_s=1_200.0, dbos_idle_window_s=5.0,
             growth_loops=1_000, growth_fresh_runs=50, handler_runs=300, shard_counts=(1, 2, 4), shard_runs=2_000)
QUICK = Sizes(latency_runs=20, latency_round=10, throughput_runs=60, throughput_rounds=2, ingress_requests=60,
              ingress_seconds=5.0, ingress_concurrency=2, fanout_items=20, large_fanout_items=50,
              large_fanout_timeout_s=60.0, dbos_idle_window_s=1.0, growth_loops=10, growth_fresh_runs=3,
              handler_runs=10, shard_counts=(), shard_runs=20)
# Issue 11 asks for the shard counts on PostgreSQL; SQLite lets one writer at a time into its file, whatever
# the number of brains and dispatchers.
SHARD_LEDGERS = ("postgres",)


@dataclass
class Context:
    """What every scenario of one ledger needs."""

    cogo: cogo_side.Cogo
    plain: celery_side.Plain
    dbos: dbos_side.Dbos
    fleet: Fleet
    sizes: Sizes
    rss: list[dict]
    dbos_rss: list[dict] = field(default_factory=list)
    database_url: str = ""
    runs_done: int = 0
    fanout_cogo: dict = field(default_factory=dict)
    """cogo's result of the ``fanout`` scenario: the wide fan-out's wall is measured against it."""

    def sample_rss(self, done_in_round: int = 0, *, phase: str = "throughput") -> None:
        """Record the RSS (MiB) of the brain and the dispatcher after ``runs_done + done_in_round`` runs."""
        sample = {"runs": self.runs_done + done_in_round, "phase": phase}
        for key, name in (("brain_mib", "cogo-orchestrator-brain"), ("dispatcher_mib", "cogo-executor-dispatcher")):
            sample[key] = round(psutil.Process(fleet.pid_of(self.fleet, name)).memory_info().rss / 2**20, 2)
        self.rss.append(sample)

    def sample_dbos_rss(self, phase: str) -> None:
        """Record the RSS (MiB) of every DBOS worker process after ``phase``."""
        self.dbos_rss.append({"phase": phase, "rss_mib": self.dbos.rss_mib()})


def rounds(total: int, size: int) -> list[int]:
    """``total`` split into rounds of at most ``size``."""
    return [min(size, total - i) for i in range(0, total, size)]


def step_latency(ctx: Context) -> dict:
    """Chains of three no-op steps, cogo, Celery and DBOS alternating in rounds."""
    gaps: dict[str, list[float]] = {"cogo": [], "celery": [], "dbos": []}
    hops: dict[str, list[float]] = {h: [] for h in cogo_side.HOPS}
    failed = 0
    for n in rounds(ctx.sizes.latency_runs, ctx.sizes.latency_round):
        got = cogo_side.chain_latency(ctx.cogo, n)
        gaps["cogo"] += got["transitions_s"]
        for hop, values in got["hops_s"].items():
            hops[hop] += values
        failed += got["failed"]
        gaps["celery"] += celery_side.chain_latency(ctx.plain, n)["transitions_s"]
        gaps["dbos"] += dbos_side.chain_latency(ctx.dbos, n)["transitions_s"]
        ctx.runs_done += n
    out = {side: {**latency_ms(v), "runs": ctx.sizes.latency_runs} for side, v in gaps.items()}
    out["cogo"]["failed_runs"] = failed
    out["cogo"]["hops_p50_ms"] = {h: latency_ms(v)["p50_ms"] for h, v in hops.items()}
    out["dbos"]["polling_interval_s"] = ctx.dbos.polling_s[dbos_side.LATENCY_VARIANT]
    out["ratio"] = {k: ratio(out["cogo"][f"{k}_ms"], out["celery"][f"{k}_ms"]) for k in ("p50", "p90", "p99")}
    out["ratio_dbos"] = {k: ratio(out["cogo"][f"{k}_ms"], out["dbos"][f"{k}_ms"]) for k in ("p50", "p90", "p99")}
    return out


def throughput(ctx: Context) -> dict:
    """One-step runs vs no-op tasks vs one-step workflows (at each DBOS polling interval), as fast as they can
    be submitted, alternating in rounds."""
    per_round = rounds(ctx.sizes.throughput_runs, -(-ctx.sizes.throughput_runs // ctx.sizes.throughput_rounds))
    cogo, celery = [], []
    dbos: dict[str, list[dict]] = {v: [] for v in dbos_side.VARIANTS}
    ctx.sample_rss()
    ctx.sample_dbos_rss("started")
    for i, n in enumerate(per_round):
        cogo.append(cogo_side.throughput(ctx.cogo, n, on_poll=ctx.sample_rss))
        ctx.runs_done += n
        ctx.sample_rss()
        celery.append(celery_side.throughput(ctx.plain, n))
        for variant in dbos_side.VARIANTS:
            dbos[variant].append(dbos_side.throughput(ctx.dbos, n, variant))
        ctx.sample_dbos_rss(f"throughput round {i + 1}")
    out = {"cogo": _total(cogo, "runs"), "celery": _total(celery, "tasks"),
           "dbos": {v: {**_total(r, "workflows"), "polling_interval_s": ctx.dbos.polling_s[v]}
                    for v, r in dbos.items()}}
    out["ratio"] = {"per_s": ratio(out["cogo"]["per_s"], out["celery"]["per_s"])}
    out["ratio_dbos"] = {v: {"per_s": ratio(out["cogo"]["per_s"], d["per_s"])} for v, d in out["dbos"].items()}
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
    """A foreach of N no-op tasks and its join vs a chord of N vs a DBOS parent workflow awaiting N children."""
    items = ctx.sizes.fanout_items
    out = {"celery": celery_side.fanout(ctx.plain, items), "cogo": cogo_side.fanout(ctx.cogo, items),
           "dbos": {v: dbos_side.fanout(ctx.dbos, items, v, timeout_s=120 + items * 0.2) for v in dbos_side.VARIANTS}}
    ctx.sample_dbos_rss(f"fan-out of {items}")
    ctx.fanout_cogo = out["cogo"]
    return {**out, **wall_ratios(out)}


def wall_ratios(out: dict) -> dict:
    """cogo's fan-out wall over Celery's and over each DBOS variant's."""
    wall = out["cogo"].get("wall_s")
    return {"ratio": {"wall": ratio(wall, out["celery"].get("wall_s"))},
            "ratio_dbos": {v: {"wall": ratio(wall, d.get("wall_s"))} for v, d in out["dbos"].items()}}


def large_fanout(ctx: Context) -> dict:
    """The fan-out at 10,000 items for each side (cogo on a quiet fleet, before DBOS); each cogo and DBOS one is
    given ``large_fanout_timeout_s`` and reported as a timeout (cogo) or skipped (DBOS) past it."""
    items, timeout_s = ctx.sizes.large_fanout_items, ctx.sizes.large_fanout_timeout_s
    out = {"celery": celery_side.fanout(ctx.plain, items),
           "cogo": cogo_side.fanout(ctx.cogo, items, timeout_s=timeout_s),
           "dbos": {v: dbos_side.fanout(ctx.dbos, items, v, timeout_s=timeout_s) for v in dbos_side.VARIANTS}}
    ctx.sample_dbos_rss(f"fan-out of {items}")
    widths = (ctx.sizes.fanout_items, items)
    return {**out, **wall_ratios(out), "linearity": linearity(ctx.fanout_cogo, out["cogo"], widths)}


def linearity(narrow: dict, wide: dict, widths: tuple[int, int]) -> dict:
    """How cogo's fan-out wall grows with its width: the wide run's wall over the narrow one's, beside the ratio
    of their widths (equal when the cost is linear in the items; issue 11 allows 1.2 × the width ratio)."""
    return {"items": list(widths), "wall_s": [narrow.get("wall_s"), wide.get("wall_s")],
            "wall_ratio": ratio(wide.get("wall_s"), narrow.get("wall_s")), "items_ratio": ratio(widths[1], widths[0])}


def memory(ctx: Context) -> dict:
    """RSS of each DBOS worker process after every phase so far, and its CPU while idle (its queues'
    polling, which it spends whatever else the machine runs)."""
    window_s = ctx.sizes.dbos_idle_window_s
    peak = max(mib for s in ctx.dbos_rss for mib in s["rss_mib"])
    return {"dbos": {"processes": len(ctx.dbos.pids), "samples": ctx.dbos_rss, "max_mib": peak,
                     "last_mib": ctx.dbos_rss[-1]["rss_mib"], "idle_cpu_pct": ctx.dbos.idle_cpu_pct(window_s),
                     "idle_window_s": window_s},
            "cogo": {"status": "not_applicable", "reason": "the brain's and dispatcher's RSS are under growth"},
            "celery": {"status": "not_applicable", "reason": "not measured"}}


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
    "handler_cost": handler_cost, "large_fanout": large_fanout, "memory": memory,
}


def run_ledger(kind: str, *, broker_url: str, plain: celery_side.Plain, workdir: Path, sizes: Sizes,
               workers: int, log: Callable[[str], None]) -> dict:
    """Every scenario on one ledger, with its own cogo fleet and its own DBOS workers."""
    results: dict[str, dict] = {}
    with (fleet.ledger(kind, workdir / kind) as url,
          fleet.cogo_fleet(broker_url=broker_url, database_url=url, workdir=workdir / kind, workers=workers) as cogo,
          dbos_side.workers(kind, workdir / kind / "dbos", count=workers) as dbos):
        engine = make_engine(url)
        client = cogo_side.Cogo(cogo.api_url, engine, api_key=cogo.api_key)
        ctx = Context(client, plain, dbos, cogo, sizes, rss=[], database_url=url)
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
    for kind in [k for k in ledgers if k in SHARD_LEDGERS and sizes.shard_counts]:
        started_shards = time.monotonic()
        results[kind]["shards"] = shards.run(ledger=kind, counts=sizes.shard_counts, runs=sizes.shard_runs,
                                             workers=workers, broker_url=broker_url, workdir=workdir / kind, log=log)
        results[kind]["shards"]["elapsed_s"] = round(time.monotonic() - started_shards, 1)
    return {"mode": "quick" if quick else "full", "started_at": started, "duration_s": round(time.time() - started, 1),
            "load_avg": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
            "config": {"worker_processes": workers, "broker": redact(broker_url), **asdict(sizes),
                       "dbos": dbos_side.config(workers)},
            "ledgers": results}
