"""The Celery app factory: JSON only, late acks, requeue on worker loss, prefetch 1, declared queues."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from kombu import Exchange, Queue

from bus.errors import ConfigError
from bus.settings import Settings

TASK_DECIDE = "cogo.decide"
"""The brain's task: apply one ``orchestrator.decide`` row."""
TASK_EXECUTE = "cogo.execute"
"""The executor-dispatcher's task: admit (or re-admit after a backoff) one assignment."""
TASK_WORK = "cogo.work"
"""A worker's task: run one dispatched assignment."""

_EXCHANGE = Exchange("cogo", type="direct", durable=True)


def declare(queue: str) -> Queue:
    """A durable queue bound to the cogo exchange under its own name."""
    return Queue(queue, _EXCHANGE, routing_key=queue, durable=True)


def make_celery(settings: Settings, *, name: str, queues: Iterable[str] = ()) -> Celery:
    """A Celery app for one cogo process, consuming ``queues`` (none for a pure producer).

    Raises:
        ConfigError: no broker URL — never Celery's default ``amqp://guest@localhost``, a broker nobody chose.
    """
    if not settings.broker_url:
        raise ConfigError("COGO_BROKER_URL is empty and no `cogo up` runs under COGO_HOME to join: set "
                          "COGO_BROKER_URL to the fleet's broker, or start the fleet with `cogo up`",
                          details={"variable": "COGO_BROKER_URL"})
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    declared = [declare(q) for q in queues]
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_exchange=_EXCHANGE.name,
        task_default_exchange_type="direct",
        task_queues=declared,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=10,  # Flower inspects from several threads at once: 4 connections starved it
        worker_send_task_events=settings.task_events,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=True,
        broker_transport_options={"visibility_timeout": 3600},
    )
    return app
