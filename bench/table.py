"""The README's tables from a bench result: ``python -m bench table [bench/results/latest.json]`` (or from a
``shards.json``: its table alone)."""

from __future__ import annotations

from typing import Any

SHORT, DEFAULT = "short_polling", "default_polling"
LARGE = "large_fanout"

# label, scenario, key, ratio key, and the DBOS variant whose number goes in the DBOS column (None: DBOS's
# result of that scenario does not depend on the queue's polling interval, or there is none).
ROWS = (
    ("step latency p50 (ms)", "step_latency", "p50_ms", "p50", None),
    ("step latency p90 (ms)", "step_latency", "p90_ms", "p90", None),
    ("step latency p99 (ms)", "step_latency", "p99_ms", "p99", None),
    ("throughput (runs, tasks or workflows/s)", "throughput", "per_s", "per_s", SHORT),
    ("throughput (runs, tasks or workflows/s)", "throughput", "per_s", "per_s", DEFAULT),
    ("ingress (requests/s)", "ingress", "per_s", "per_s", None),
    ("ingress p99 (ms)", "ingress", "p99_ms", "p99", None),
    ("fan-out + join wall (s)", "fanout", "wall_s", "wall", SHORT),
    ("fan-out + join wall (s)", "fanout", "wall_s", "wall", DEFAULT),
    ("{items}-way fan-out + join wall (s)", LARGE, "wall_s", "wall", SHORT),
    ("{items}-way fan-out + join wall (s)", LARGE, "wall_s", "wall", DEFAULT),
)


def markdown(result: dict[str, Any]) -> str:
    """The comparison table, the DBOS workers' table, the growth table, the shards table and the targets, as
    Markdown; a ``python -m bench shards`` result's table alone."""
    if "ledgers" not in result:
        return "\n".join(_shards([result])[1:])
    lines = ["| ledger | scenario | cogo | plain Celery | DBOS | cogo / Celery | cogo / DBOS |",
             "|---|---|---:|---:|---:|---:|---:|"]
    items = f"{result.get('config', {}).get('large_fanout_items', 10_000):,}"
    for kind, ledger in result["ledgers"].items():
        for label, scenario, key, ratio_key, variant in ROWS:
            data = ledger.get(scenario)
            if data is None or (variant == DEFAULT and "dbos" not in data):
                continue  # a result from before the DBOS side: one row per scenario, as it was
            lines.append(_row(kind, label.format(items=items), data, key, ratio_key, variant))
    lines += _dbos_workers(result)
    lines += ["", "| ledger | history (events) | steps | step (ms) | per event (ms) |", "|---|---:|---:|---:|---:|"]
    for kind, ledger in result["ledgers"].items():
        for b in ledger.get("growth", {}).get("cogo", {}).get("buckets", []):
            lines.append(f"| {kind} | ~{b['history_median']} | {b['steps']} | {_fmt(b['step_ms'])} | "
                         f"{_fmt(b['per_event_ms'])} |")
    lines += _shards([ledger["shards"] for ledger in result["ledgers"].values() if "shards" in ledger])
    lines += ["", "| ledger | target | measured | met |", "|---|---|---:|---|"]
    for t in result.get("targets", []):
        met = {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['ledger']} | {t['target']} | {_fmt(t['value'])} | {met}"
                     f"{' — ' + t['note'] if t.get('note') else ''} |")
    return "\n".join(lines)


def _row(kind: str, label: str, data: dict, key: str, ratio_key: str, variant: str | None) -> str:
    """One scenario's row: the three sides' numbers and cogo's ratio to each of the other two."""
    dbos, dbos_ratio = data.get("dbos", {}), data.get("ratio_dbos", {})
    if variant:
        dbos, dbos_ratio = dbos.get(variant, {}), dbos_ratio.get(variant, {})
        if "polling_interval_s" in dbos:
            default = " (DBOS's default)" if variant == DEFAULT else ""
            label += f"; DBOS queue polling {dbos['polling_interval_s']:g} s{default}"
    return (f"| {kind} | {label} | {_side(data.get('cogo', {}), key)} | {_side(data.get('celery', {}), key)} | "
            f"{_side(dbos, key)} | {_fmt(data.get('ratio', {}).get(ratio_key))} | {_fmt(dbos_ratio.get(ratio_key))} |")


def _dbos_workers(result: dict[str, Any]) -> list[str]:
    """The DBOS worker processes: their memory, their CPU while idle, and how they were configured."""
    measured = {kind: ledger["memory"]["dbos"] for kind, ledger in result["ledgers"].items()
                if "dbos" in ledger.get("memory", {})}
    if not measured:
        return []
    config = result.get("config", {}).get("dbos", {})
    lines = ["", f"DBOS {result.get('versions', {}).get('dbos', '?')}: "
                 f"{config.get('worker_processes')} worker processes, worker_concurrency "
                 f"{config.get('worker_concurrency')} per process, enqueued from {config.get('enqueue_threads')} "
                 f"threads of the bench's process.",
             "", "| ledger | DBOS worker RSS, max (MiB) | RSS at the end (MiB) | idle CPU (% of a core) |",
             "|---|---:|---|---|"]
    for kind, m in measured.items():
        lines.append(f"| {kind} | {_fmt(m['max_mib'])} | {', '.join(_fmt(v) for v in m['last_mib'])} | "
                     f"{', '.join(_fmt(v) for v in m['idle_cpu_pct'])} |")
    return lines


def _shards(measured: list[dict]) -> list[str]:
    """cogo's throughput and CPU milliseconds per run of each process kind at each shard count (none when
    the shards were not measured)."""
    if not measured:
        return []
    lines = ["", "| ledger | shards | runs/s | CPU ms per run: brain | dispatcher | workers | API | all cogo "
                 "| whole machine |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in measured:
        for c in m["counts"]:
            cpu = c["cpu_ms_per_run"]
            cells = [_fmt(cpu.get(k)) for k in ("brain", "dispatcher", "workers", "api", "total")]
            machine = _fmt(round(c["machine_cpu_s"] / c["runs"] * 1000, 3))
            lines.append(f"| {m['ledger']} | {c['shards']} | {_fmt(c['per_s'])} | {' | '.join(cells)} | {machine} |")
    return lines


def _side(data: dict, key: str) -> str:
    """A side's number, or why there is none (skipped, not run, timed out after so many items, …)."""
    if data.get(key) is None and data.get("status") == "timeout":
        return f"timeout ({data['items_done']:,} of {data['items']:,} items in {_fmt(data['elapsed_s'])} s)"
    if data.get(key) is None and data.get("status") not in (None, "ok"):
        return data["status"].replace("_", " ")
    return _fmt(data.get(key))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
