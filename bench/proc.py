"""The entry the bench gives the launcher when it profiles: ``bench.proc:run`` wraps a process's own entry.

With ``BENCH_PROFILE_DIR`` set, the process runs under pyinstrument and, when it exits, writes
``<dir>/<name>-<pid>.txt`` (the profile) and ``.json`` (tasks handled, SQL statements run, statements per
task and the most frequent statements).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from bus.settings import Settings

NOOP_WORKER = "bench-noop-worker"
NOOP_ENTRY = "bench.noop_worker:main"
PROFILE_ENV = "BENCH_PROFILE_DIR"


def entry(name: str) -> Callable[[Settings, str], None]:
    """The ``main(settings, name)`` of the process called ``name`` (the table's, or the no-op worker's)."""
    if name == NOOP_WORKER:
        spec = NOOP_ENTRY
    else:
        from ecosystem.processes import by_name

        spec = by_name(name).entry
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)


class Counters:
    """Counts SQL statements (and which) and Celery tasks handled in this process."""

    def __init__(self) -> None:
        self.statements = 0
        self.tasks = 0
        self.by_statement: dict[str, int] = {}

    def install(self) -> None:
        """Listen on every engine and on Celery's task signals."""
        from celery import signals
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        @event.listens_for(Engine, "before_cursor_execute")
        def _statement(_conn, _cursor, statement, *_args) -> None:
            self.statements += 1
            key = " ".join(statement.split())[:90]
            self.by_statement[key] = self.by_statement.get(key, 0) + 1

        @signals.task_postrun.connect(weak=False)
        def _task(**_kwargs) -> None:
            self.tasks += 1

    def as_dict(self) -> dict:
        """The counts, with statements per task and the most frequent statements."""
        top = sorted(self.by_statement.items(), key=lambda kv: -kv[1])[:25]
        return {"tasks": self.tasks, "statements": self.statements,
                "statements_per_task": round(self.statements / self.tasks, 2) if self.tasks else None,
                "top_statements": [{"sql": k, "count": v} for k, v in top]}


def run(settings: Settings, name: str) -> None:
    """Run the process called ``name``; under pyinstrument when ``BENCH_PROFILE_DIR`` is set."""
    main = entry(name)
    directory = os.environ.get(PROFILE_ENV)
    if not directory:
        main(settings, name)
        return
    import signal
    import sys

    from pyinstrument import Profiler

    # uvicorn re-raises SIGTERM after its graceful shutdown: exit through ``finally`` instead of dying.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    counters = Counters()
    counters.install()
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        main(settings, name)
    finally:
        profiler.stop()
        path = Path(directory) / f"{name}-{os.getpid()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        path.with_suffix(".json").write_text(json.dumps(counters.as_dict(), indent=1))
