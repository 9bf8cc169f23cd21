"""A worker for fault tests: ``test.slow`` sleeps on its first attempt and records starts and ends in files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bus.settings import Settings
from workers.handler import WorkContext, WorkResult


def slow(ctx: WorkContext, payload: dict) -> WorkResult:
    """Append to ``starts``; sleep ``sleep_s`` on attempt 1; append to ``ends``."""
    marks = Path(payload["marks_dir"])
    with open(marks / "starts", "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n")
    if ctx.attempt == 1:
        time.sleep(float(payload.get("sleep_s", 0)))
    with open(marks / "ends", "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n")
    return WorkResult(output={"attempt": ctx.attempt, "pid": os.getpid()})


HANDLERS = {("test", "slow"): slow}


def main(settings: Settings, name: str) -> None:
    """Serve ``test.slow``."""
    from workers.runtime import serve

    serve(settings, name=name, handlers=HANDLERS)
