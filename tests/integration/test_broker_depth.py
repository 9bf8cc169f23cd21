"""The reclaimer asks the broker how many messages wait in a queue: on Redis and on RabbitMQ."""

from __future__ import annotations

import pytest

from bus.broker import queue_depth
from bus.celery_app import make_celery
from bus.outbox import Delivery, Publisher
from bus.settings import Settings
from tests.support.services import RABBITMQ_URL, REDIS_URL, require, unique
from tests.support.waiting import wait_until


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_queue_depth_counts_what_was_published(broker):
    if broker == "redis":
        require("Redis", "127.0.0.1", 6379)
        url = REDIS_URL
    else:
        require("RabbitMQ", "127.0.0.1", 5672)
        url = RABBITMQ_URL
    queue = unique("depth.test.")
    app = make_celery(Settings(broker_url=url).checked(), name="depth-test", queues=[queue])
    try:
        assert queue_depth(app, queue) == 0  # never declared: nothing in it
        Publisher(app).send([Delivery("cogo.work", queue, f"m{i}") for i in range(3)])
        # RabbitMQ routes a publish asynchronously: the depth reaches 3 a moment later, and never passes it.
        assert wait_until(lambda: queue_depth(app, queue) == 3, timeout=10, message="the depth to reach 3")
        assert queue_depth(app, queue) == 3
    finally:
        with app.connection_for_write() as conn:
            try:
                conn.default_channel.queue_delete(queue)
            except Exception:  # already gone is fine
                pass
