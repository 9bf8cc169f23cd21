"""A worker for fault tests: ``test.slow`` sleeps (or waits to be released) on its first attempt and records
starts and ends in files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bus.settings import Settings
from workers.handler import WorkContext, WorkResult


RELEASE = "release"
"""The file a test writes in ``marks_dir`` to let a held first attempt go on."""


def slow(ctx: WorkContext, payload: dict) -> WorkResult:
    """Append to ``starts``; on attempt 1 sleep ``sleep_s`` and, with ``hold``, wait until ``marks_dir/release``
    exists (the TTL bounds the wait); append to ``ends``."""
    marks = Path(payload["marks_dir"])
    with open(marks / "starts", "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n")
    if ctx.attempt == 1:
        time.sleep(float(payload.get("sleep_s") or 0))
        while payload.get("hold") and not (marks / RELEASE).exists():
            time.sleep(0.05)
    with open(marks / "ends", "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n")
    return WorkResult(output={"attempt": ctx.attempt, "pid": os.getpid()})


HANDLERS = {("test", "slow"): slow}


def main(settings: Settings, name: str) -> None:
    """Serve ``test.slow``."""
    from workers.runtime import serve

    serve(settings, name=name, handlers=HANDLERS)
