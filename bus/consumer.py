"""Run a Celery consumer for one cogo process: one task, the process's queues, the solo pool.

The solo pool runs each task in the worker's main thread: no IPC hop per task, a kill -9 takes the task
with it (the ledger's lease notices), and SIGALRM can enforce a TTL.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence

from celery import signals
from celery.worker.consumer import Consumer

from bus.celery_app import make_celery
from bus.readiness import mark_ready
from bus.settings import Settings

log = logging.getLogger(__name__)


class CogoConsumer(Consumer):
    """Celery's consumer, kept alive when its broker goes away while it holds unacknowledged messages.

    On a lost connection Celery closes it, and kombu's Redis channel then tries to give the unacknowledged messages
    back to a broker that is down. Once Celery has dropped the transport's client, that attempt raises
    ``AttributeError`` (kombu #582 and its family), which Celery's error guard does not catch, and the consumer dies
    with "Unrecoverable error" instead of reconnecting. Nothing is lost by skipping that restore: the messages are
    still in the broker's unacked set if it kept them, and the ledger's reclaimer re-sends every one it lost.
    """

    def on_connection_error_after_connected(self, exc):
        if self.connection is not None:
            self.connection.close = _closing_what_is_left(self.connection.close)
        super().on_connection_error_after_connected(exc)


def _closing_what_is_left(close: Callable[[], None]) -> Callable[[], None]:
    def close_lost_connection() -> None:
        try:
            close()
        except AttributeError as error:  # kombu reaching for a transport client Celery already dropped
            log.warning("closing the lost broker connection: %s; its unacknowledged messages stay with the broker "
                        "and the reclaimer", error)
    return close_lost_connection


def run_consumer(settings: Settings, *, name: str, queues: list[str], task_name: str,
                 handle: Callable[[str], object],
                 handle_batch: Callable[[Sequence[str]], object] | None = None) -> None:
    """Consume ``queues`` forever, calling ``handle(message_id)`` for each row id of a ``task_name`` message
    (or ``handle_batch(ids)`` once for all of them, when given: ``bus.outbox.BATCHED``)."""
    app = make_celery(settings, name=name, queues=queues)
    app.conf.worker_consumer = f"{__name__}:CogoConsumer"

    @app.task(name=task_name, bind=False, acks_late=True)
    def _task(*message_ids: str) -> None:
        if handle_batch is not None:
            handle_batch(message_ids)
            return
        for message_id in message_ids:
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
