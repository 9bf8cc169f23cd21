"""Times a person reads: ISO 8601 (UTC) beside every epoch-seconds field of an API answer.

The ledger keeps times as epoch seconds (doubles); people read ``2026-12-02T01:37:44.123Z``. An answer
keeps its epoch values (clients compare and subtract them) and gains ``<key>_iso`` next to each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

TIME_KEYS = frozenset({"at", "since", "until"})
"""Keys that hold a time on their own; any key ending in ``_at``, ``_since`` or ``_until`` does too."""
TIME_SUFFIXES = ("_at", "_since", "_until")
OPAQUE_KEYS = frozenset({"input", "context", "output", "payload", "data"})
"""Values that are a user's or a workflow's own data: never rewritten (they are shown as given)."""
_MAX_EPOCH_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second ``datetime`` can show


def is_time_key(key: object) -> bool:
    """Whether ``key`` names an epoch-seconds field (``created_at``, ``since``, ``lease_until`` …)."""
    return isinstance(key, str) and not key.endswith("_iso") and (key in TIME_KEYS or key.endswith(TIME_SUFFIXES))


def iso(epoch_s: float | None) -> str | None:
    """``epoch_s`` as UTC ISO 8601 with milliseconds (``2026-12-02T01:37:44.123Z``); None when not a time."""
    if isinstance(epoch_s, bool) or not isinstance(epoch_s, int | float):
        return None
    if not math.isfinite(epoch_s) or not 0 <= epoch_s <= _MAX_EPOCH_S:
        return None
    text = datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def clock(epoch_s: float | None) -> str:
    """The time of day of ``epoch_s`` in UTC (``08:31:05 UTC``), for a reason that must read the same at every ask;
    ``now`` when not a time."""
    text = iso(epoch_s)
    return f"{text[11:19]} UTC" if text else "now"


def with_iso(tree: Any, *, opaque: Iterable[str] = OPAQUE_KEYS) -> Any:
    """A copy of ``tree`` (dicts and lists) with ``<key>_iso`` beside every epoch-seconds field.

    A field whose value is None gets ``<key>_iso: None`` (the answer keeps one shape); a key that is
    already there is left alone; values under ``opaque`` keys are copied unchanged. The input is not
    modified.
    """
    skip = frozenset(opaque)
    if isinstance(tree, Mapping):
        out: dict[Any, Any] = {}
        for key, value in tree.items():
            out[key] = value if key in skip else with_iso(value, opaque=skip)
            if is_time_key(key) and f"{key}_iso" not in tree and (value is None or iso(value) is not None):
                out[f"{key}_iso"] = iso(value)
        return out
    if isinstance(tree, list | tuple):
        return [with_iso(item, opaque=skip) for item in tree]
    return tree


def duration(seconds: float | None) -> str:
    """A span as a person says it: ``850 ms``, ``12.4 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "?"
    s = abs(float(seconds))
    if s < 1:
        return f"{math.floor(s * 1000):.0f} ms"
    if s < 60:
        return f"{math.floor(s * 10) / 10:.1f} s"  # truncated, so 59.99 s never reads "60.0 s"
    whole = int(s)
    if whole < 3600:
        return _two(whole, 60, "min", "s")
    if whole < 86400:
        return _two(whole // 60, 60, "h", "min")
    return _two(whole // 3600, 24, "d", "h")


def _two(value: int, size: int, major_unit: str, minor_unit: str) -> str:
    major, minor = divmod(value, size)
    return f"{major} {major_unit}" + (f" {minor} {minor_unit}" if minor else "")


def ago(epoch_s: float | None, *, now: float) -> str:
    """``epoch_s`` relative to ``now``: ``just now``, ``3 min ago``, ``in 5 min``; ``-`` when not a time."""
    if iso(epoch_s) is None:
        return "-"
    delta = now - float(epoch_s)
    if abs(delta) < 1:
        return "just now"
    text = _rounded(abs(delta))
    return f"{text} ago" if delta > 0 else f"in {text}"


def _rounded(seconds: float) -> str:
    """A relative span at the precision a person cares about (``42 s``, ``3 min``, ``2 h 5 min``, ``4 days``)."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days = whole // 86400
    return f"{days} day" + ("s" if days != 1 else "")
