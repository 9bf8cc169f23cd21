"""Run a Celery consumer for one cogo process: one task, the process's queues, the solo pool.

The solo pool runs each task in the worker's main thread: no IPC hop per task, a kill -9 takes the task
with it (the ledger's lease notices), and SIGALRM can enforce a TTL.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from celery import signals

from bus.celery_app import make_celery
from bus.readiness import mark_ready
from bus.settings import Settings

log = logging.getLogger(__name__)


def run_consumer(settings: Settings, *, name: str, queues: list[str], task_name: str,
                 handle: Callable[[str], None]) -> None:
    """Consume ``queues`` forever, calling ``handle(message_id)`` for each ``task_name`` message."""
    app = make_celery(settings, name=name, queues=queues)

    @app.task(name=task_name, bind=False, acks_late=True)
    def _task(message_id: str) -> None:
        handle(message_id)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_kwargs) -> None:
        log.info("%s ready on %s", name, ", ".join(queues))
        mark_ready()

    hostname = f"{name}@{socket.gethostname()}.{os.getpid()}"
    argv = ["worker", "-Q", ",".join(queues), "-n", hostname, "--without-gossip", "--without-mingle",
            f"--loglevel={settings.log_level}"]
    argv.append("--pool=solo")  # one task at a time per process: scale with replicas, keep SIGALRM for TTLs
    if settings.task_events:
        argv.append("-E")
    app.worker_main(argv)
