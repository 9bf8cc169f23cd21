"""The README's table from a bench result: ``python -m bench table [bench/results/latest.json]``."""

from __future__ import annotations

from typing import Any

ROWS = (
    ("step latency p50 (ms)", "step_latency", "p50_ms", ("ratio", "p50")),
    ("step latency p90 (ms)", "step_latency", "p90_ms", ("ratio", "p90")),
    ("step latency p99 (ms)", "step_latency", "p99_ms", ("ratio", "p99")),
    ("throughput (runs or tasks/s)", "throughput", "per_s", ("ratio", "per_s")),
    ("ingress (requests/s)", "ingress", "per_s", ("ratio", "per_s")),
    ("ingress p99 (ms)", "ingress", "p99_ms", ("ratio", "p99")),
    ("fan-out + join wall (s)", "fanout", "wall_s", ("ratio", "wall")),
)


def markdown(result: dict[str, Any]) -> str:
    """The comparison table, the growth table and the targets, as Markdown."""
    lines = ["| ledger | scenario | cogo | plain Celery | cogo / Celery |", "|---|---|---:|---:|---:|"]
    for kind, ledger in result["ledgers"].items():
        for label, scenario, key, (group, ratio_key) in ROWS:
            data = ledger.get(scenario, {})
            lines.append(f"| {kind} | {label} | {_fmt(data.get('cogo', {}).get(key))} | "
                         f"{_fmt(data.get('celery', {}).get(key))} | {_fmt(data.get(group, {}).get(ratio_key))} |")
    lines += ["", "| ledger | history (events) | steps | step (ms) | per event (ms) |", "|---|---:|---:|---:|---:|"]
    for kind, ledger in result["ledgers"].items():
        for b in ledger.get("growth", {}).get("cogo", {}).get("buckets", []):
            lines.append(f"| {kind} | ~{b['history_median']} | {b['steps']} | {_fmt(b['step_ms'])} | "
                         f"{_fmt(b['per_event_ms'])} |")
    lines += ["", "| ledger | target | measured | met |", "|---|---|---:|---|"]
    for t in result.get("targets", []):
        met = {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['ledger']} | {t['target']} | {_fmt(t['value'])} | {met}"
                     f"{' — ' + t['note'] if t.get('note') else ''} |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
