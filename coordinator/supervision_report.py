"""What the supervisor (``cogo up``) knows of its processes, written where the API and the metrics read it.

``cogo up`` writes ``<COGO_HOME>/run/supervision.json`` whenever a process starts, dies, is restarted or is
given up on as crash-looping; ``GET /api/fleet``, ``/metrics`` and ``cogo status`` report it. Only a process
on the supervisor's host (sharing its ``COGO_HOME``) can read it: elsewhere, and under another supervisor
(compose, Kubernetes), the answer is ``None`` and that supervisor's own view applies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPORT = Path("run") / "supervision.json"

RUNNING = "running"
RESTARTING = "restarting"
CRASH_LOOPING = "crash_looping"


def report_path(home: Path) -> Path:
    """Where the supervisor of the fleet under ``home`` writes its report."""
    return Path(home) / REPORT


def write(home: Path, report: dict[str, Any]) -> None:
    """Replace the report atomically (a reader never sees half of it)."""
    path = report_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(report, indent=1, sort_keys=True))
    os.replace(partial, path)


def read(home: Path) -> dict[str, Any] | None:
    """The supervisor's report, or None when no supervisor on this host writes one (or it is unreadable)."""
    try:
        report = json.loads(report_path(home).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def remove(home: Path) -> None:
    """The supervisor stopped: no report is better than a stale one."""
    report_path(home).unlink(missing_ok=True)
