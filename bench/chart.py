"""The PNG chart of a bench result (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A bar's label, colour, and where its side's result sits in a scenario's (DBOS's is per polling interval
# where the interval matters).
COGO, CELERY = ("cogo", "#d1495b", ("cogo",)), ("plain Celery", "#00798c", ("celery",))
DBOS = ("DBOS", "#edae49", ("dbos",))
DBOS_SHORT = ("DBOS, short polling", "#edae49", ("dbos", "short_polling"))
DBOS_DEFAULT = ("DBOS, default polling", "#66a182", ("dbos", "default_polling"))


def draw(result: dict[str, Any], path: Path) -> bool:
    """Draw ``result`` into ``path``; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ledgers = result["ledgers"]
    polled = (COGO, CELERY, DBOS_SHORT, DBOS_DEFAULT)
    large = f"{result['config'].get('large_fanout_items', 10_000):,}"
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    _bars(axes[0][0], ledgers, "step latency p50 / p99 (ms, log)",
          [("p50", "step_latency", "p50_ms"), ("p99", "step_latency", "p99_ms")], (COGO, CELERY, DBOS), log=True)
    _bars(axes[0][1], ledgers, "throughput (runs, tasks or workflows / s, log)", [("", "throughput", "per_s")],
          polled, log=True)
    _bars(axes[0][2], ledgers, "ingress (requests / s)", [("", "ingress", "per_s")], (COGO, CELERY))
    _bars(axes[1][0], ledgers, f"fan-out + join wall time (s, log){_linearity(ledgers)}",
          [(f"{result['config']['fanout_items']:,}", "fanout", "wall_s"), (large, "large_fanout", "wall_s")],
          polled, log=True)
    _growth(axes[1][1], ledgers)
    _rss(axes[1][2], ledgers)
    fig.suptitle(f"cogo vs plain Celery vs DBOS — {result['mode']} run, {result['machine']['cores']} cores, "
                 f"{result['config']['worker_processes']} worker processes each; DBOS short polling "
                 f"{_short_polling(result)}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _short_polling(result: dict[str, Any]) -> str:
    """The short polling interval, as the DBOS side configured it."""
    interval = result["config"].get("dbos", {}).get("polling_interval_s", {}).get("short_polling")
    return "not measured" if interval is None else f"{interval:g} s, default polling DBOS's own"


def _bars(ax, ledgers: dict, title: str, series: list[tuple[str, str, str]], sides: tuple, *,
          log: bool = False) -> None:
    labels = [f"{kind}{' ' + tag if tag else ''}" for kind in ledgers for tag, _, _ in series]
    width = 0.8 / len(sides)
    for offset, (side, color, path) in enumerate(sides):
        found = [(_at(ledgers[kind].get(scenario, {}), path), key) for kind in ledgers for _, scenario, key in series]
        values = [_num(data.get(key)) for data, key in found]
        xs = [i + (offset - (len(sides) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [v or 0 for v in values], width, label=side, color=color)
        for x, v, (data, _) in zip(xs, values, found, strict=True):
            if v is None:  # no bar: say why at the foot of the axis (a log axis has no 0 to put it at)
                ax.annotate(_why_none(data), (x, 0.02), xycoords=("data", "axes fraction"), ha="center",
                            va="bottom", fontsize=8, rotation=90)
            else:
                ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)


def _why_none(data: dict) -> str:
    """Why a side has no bar: its status (timeout, skipped, not run), or n/a."""
    return data.get("status", "n/a").replace("_", " ")


def _linearity(ledgers: dict) -> str:
    """cogo's wide fan-out wall over its narrow one per ledger, for the fan-out panel's title."""
    measured = {kind: results.get("large_fanout", {}).get("linearity") or {} for kind, results in ledgers.items()}
    measured = {kind: m for kind, m in measured.items() if m.get("wall_ratio") is not None}
    if not measured:
        return ""
    narrow, wide = next(iter(measured.values()))["items"]
    return (f"\ncogo's {wide:,}-way wall / its {narrow:,}-way: "
            + ", ".join(f"{kind} {m['wall_ratio']:.3g} ×" for kind, m in measured.items()))


def _growth(ax, ledgers: dict) -> None:
    for kind, results in ledgers.items():
        buckets = results.get("growth", {}).get("cogo", {}).get("buckets", [])
        ax.plot([b["history_median"] for b in buckets], [b["per_event_ms"] for b in buckets], marker="o", label=kind)
    ax.set_xscale("log")
    ax.set_title("cogo: ms per event vs events of history")
    ax.set_xlabel("events already in the run's history")
    ax.legend(fontsize=8)


def _rss(ax, ledgers: dict) -> None:
    for kind, results in ledgers.items():
        samples = results.get("growth", {}).get("cogo", {}).get("rss", [])
        steady = [s for s in samples if s.get("phase", "throughput") == "throughput"]
        after = [s for s in samples if s.get("phase", "throughput") != "throughput"]
        for key, style in (("brain_mib", "-"), ("dispatcher_mib", "--")):
            line, = ax.plot([s["runs"] for s in steady], [s[key] for s in steady], style,
                            label=f"{kind} {key.split('_')[0]}")
            ax.plot([s["runs"] for s in after], [s[key] for s in after], "x", color=line.get_color())
    ax.set_title("cogo: RSS (MiB) vs runs (x: after the fan-out and the loop)")
    ax.set_xlabel("runs so far")
    ax.legend(fontsize=8)


def _at(data: dict, path: tuple[str, ...]) -> dict:
    """``data[path[0]][path[1]]…``, or ``{}`` where a level is missing."""
    for part in path:
        data = data.get(part, {})
    return data


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None
