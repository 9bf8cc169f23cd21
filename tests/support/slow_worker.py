"""A worker for fault tests: ``test.slow`` sleeps on its first attempt, waits until the test releases an attempt
it was told to hold, and records starts and ends in files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bus.settings import Settings
from workers.handler import WorkContext, WorkResult


def release_file(marks: Path, attempt: int) -> Path:
    """The file a test writes in ``marks_dir`` to let a held attempt go on."""
    return marks / f"release-{attempt}"


def slow(ctx: WorkContext, payload: dict) -> WorkResult:
    """Append to ``starts``; sleep ``sleep_s`` on attempt 1; if the attempt is listed in ``hold``, wait until
    its ``release_file`` exists (the TTL bounds the wait); append to ``ends``."""
    marks = Path(payload["marks_dir"])
    with open(marks / "starts", "a") as f:
        f.write(f"{ctx.assignment_id} {ctx.attempt} {os.getpid()}\n")
    if ctx.attempt == 1:
        time.sleep(float(payload.get("sleep_s") or 0))
    while ctx.attempt in (payload.get("hold") or ()) and not release_file(marks, ctx.attempt).exists():
        time.sleep(0.05)
    with open(marks / "ends", "a") as f:
        f.write(f"{ctx.assignment_id} {ctx.attempt} {os.getpid()}\n")
    return WorkResult(output={"attempt": ctx.attempt, "pid": os.getpid()})


HANDLERS = {("test", "slow"): slow}


def main(settings: Settings, name: str) -> None:
    """Serve ``test.slow``."""
    from workers.runtime import serve

    serve(settings, name=name, handlers=HANDLERS)
