"""When ``cogo up`` restarts a process that died: a backoff that doubles, and a crash loop that stops it.

Pure: the launcher hands in the times a process died and the clock; this module decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    """Restart after ``initial_s``, doubling per recent death up to ``max_s``; a process that died
    ``crash_loop_deaths`` times within ``window_s`` is crash-looping and left stopped (and reported)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    window_s: float = 60.0
    crash_loop_deaths: int = 5


def restart_delay(deaths: Sequence[float], now: float, policy: RestartPolicy = RestartPolicy()) -> float | None:
    """Seconds to wait before restarting a process that died at each time of ``deaths`` (the last is now's);
    None when it is crash-looping."""
    recent = [t for t in deaths if now - t <= policy.window_s]
    if len(recent) >= policy.crash_loop_deaths:
        return None
    return min(policy.max_s, policy.initial_s * 2 ** max(0, len(recent) - 1))
