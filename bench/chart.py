"""The PNG chart of a bench result (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIDES = (("cogo", "#d1495b"), ("celery", "#00798c"))


def draw(result: dict[str, Any], path: Path) -> bool:
    """Draw ``result`` into ``path``; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ledgers = result["ledgers"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    _bars(axes[0][0], ledgers, "step latency p50 / p99 (ms, log)",
          [("p50", "step_latency", "p50_ms"), ("p99", "step_latency", "p99_ms")], log=True)
    _bars(axes[0][1], ledgers, "throughput (runs or tasks / s)", [("", "throughput", "per_s")])
    _bars(axes[0][2], ledgers, "ingress (requests / s)", [("", "ingress", "per_s")])
    _bars(axes[1][0], ledgers, "fan-out + join wall time (s)", [("", "fanout", "wall_s")])
    _growth(axes[1][1], ledgers)
    _rss(axes[1][2], ledgers)
    fig.suptitle(f"cogo vs plain Celery — {result['mode']} run, {result['machine']['cores']} cores, "
                 f"{result['config']['worker_processes']} worker processes each")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _bars(ax, ledgers: dict, title: str, series: list[tuple[str, str, str]], *, log: bool = False) -> None:
    labels = [f"{kind}{' ' + tag if tag else ''}" for kind in ledgers for tag, _, _ in series]
    width = 0.38
    for offset, (side, color) in enumerate(SIDES):
        values = [_num(ledgers[kind].get(scenario, {}).get(side, {}).get(key))
                  for kind in ledgers for _, scenario, key in series]
        xs = [i + (offset - 0.5) * width for i in range(len(labels))]
        ax.bar(xs, [v or 0 for v in values], width, label=side, color=color)
        for x, v in zip(xs, values, strict=True):
            ax.annotate("n/a" if v is None else f"{v:.3g}", (x, v or 0), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)


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


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None
