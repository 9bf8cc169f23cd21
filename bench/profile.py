"""``python -m bench profile``: the throughput scenario with every cogo process under pyinstrument.

Writes ``<out>/profile/<ledger>/<process>-<pid>.txt`` (pyinstrument's tree) and ``.json`` (tasks, SQL statements
per task, the most frequent statements) and returns a summary: per process, its CPU share of the run and
the statements it ran per task.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from bench import cogo_side, fleet
from bus.db import make_engine


def profile(*, kind: str, runs: int, workers: int, broker_url: str, out: Path) -> dict:
    """Run ``runs`` one-step runs on a profiled fleet over a ``kind`` ledger; summarize the profiles."""
    target = out / "profile" / kind
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, fleet.ledger(kind, Path(tmp)) as url, \
            fleet.cogo_fleet(broker_url=broker_url, database_url=url, workdir=Path(tmp), workers=workers,
                             profile_dir=target) as cogo:
        engine = make_engine(url)
        client = cogo_side.Cogo(cogo.api_url, engine, api_key=cogo.api_key)
        try:
            measured = cogo_side.throughput(client, runs)
        finally:
            client.close()
            engine.dispose()
    return {"ledger": kind, "throughput": measured, "processes": summarize(target)}


def summarize(directory: Path) -> dict:
    """Per profiled process: wall and CPU seconds (pyinstrument's header) and the SQL counters."""
    out = {}
    for counters in sorted(directory.glob("*.json")):
        text = counters.with_suffix(".txt").read_text()
        duration = re.search(r"Duration: ([0-9.]+)", text)
        cpu = re.search(r"CPU time: ([0-9.]+)", text)
        data = json.loads(counters.read_text())
        out[counters.stem] = {"duration_s": float(duration.group(1)) if duration else None,
                              "cpu_s": float(cpu.group(1)) if cpu else None, "tasks": data["tasks"],
                              "statements_per_task": data["statements_per_task"],
                              "profile": str(counters.with_suffix(".txt"))}
    return out
