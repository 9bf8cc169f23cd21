"""Asking the broker how many messages wait in a queue (Redis list length or AMQP message count)."""

from __future__ import annotations

import logging

from celery import Celery

log = logging.getLogger(__name__)


def queue_depth(app: Celery, queue: str) -> int | None:
    """Messages ready in ``queue``; None when the broker cannot say (then assume nothing was lost)."""
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            if hasattr(channel, "_size"):  # kombu's virtual transports (Redis): the list's length
                return int(channel._size(queue))
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as exc:  # a queue that was never declared on AMQP raises NOT_FOUND: it holds nothing
        if "NOT_FOUND" in str(exc) or "404" in str(exc):
            return 0
        log.warning("cannot read the depth of %s: %s", queue, exc)
        return None
