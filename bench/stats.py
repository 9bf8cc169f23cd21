"""Small statistics: percentiles by linear interpolation, and latency summaries in milliseconds."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, linearly interpolated; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The 50th percentile."""
    return percentile(values, 50)


def latency_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max (ms) and the count of a list of durations in seconds (None when empty)."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "count": 0}
    return {"p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3),
            "p99_ms": round(percentile(ms, 99), 3), "max_ms": round(max(ms), 3), "count": len(ms)}


def ratio(cogo: float | None, celery: float | None) -> float | None:
    """``cogo / celery`` rounded, or None when either is missing or celery is zero."""
    if cogo is None or celery is None or celery == 0 or cogo != cogo or celery != celery:
        return None
    return round(cogo / celery, 3)
