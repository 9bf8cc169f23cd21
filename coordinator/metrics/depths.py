"""Queue depths as the broker says, for one scrape: one connection for every queue, an overall deadline, and the
first failure ends the asking. A broker that is down or slow costs a scrape at most about ``DEADLINE_S`` (not a
connection attempt with retries per queue: kombu's default spends ~6 s on each), so the scrape answers within
Prometheus's timeout with every other family, and says the broker did not answer (``cogo_broker_up 0``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)
DEADLINE_S = 2.0
"""The most a scrape spends asking the broker (connecting included)."""


@dataclass(frozen=True)
class Depths:
    """What the broker said: messages ready per queue it answered for, and whether it answered every one in time."""

    by_queue: dict[str, int] = field(default_factory=dict)
    up: bool = True


def queue_depths(app: Celery, queues: Sequence[str], *, deadline_s: float = DEADLINE_S,
                 clock: Callable[[], float] = time.monotonic) -> Depths:
    """Ask the broker of ``app`` the depth of each of ``queues`` through one connection, stopping at the first
    failure or once ``deadline_s`` has passed (the queues not asked yet are then left out, and ``up`` is False).

    A queue that was never declared (AMQP answers NOT_FOUND) holds nothing: 0.
    """
    end = clock() + deadline_s
    found: dict[str, int] = {}
    timeouts = {"socket_timeout": deadline_s, "socket_connect_timeout": deadline_s,  # Redis
                "read_timeout": deadline_s, "write_timeout": deadline_s}  # AMQP
    try:
        with app.connection_for_write(connect_timeout=deadline_s, transport_options=timeouts) as conn:
            conn.ensure_connection(max_retries=0, timeout=deadline_s)  # no retry: a scrape is tried again anyway
            channel = conn.channel()
            for queue in queues:
                if clock() > end:
                    log.warning("the broker did not tell %d queue depths within %.1f s", len(queues) - len(found),
                                deadline_s)
                    return Depths(found, up=False)
                depth, channel = _depth(conn, channel, queue)
                found[queue] = depth
    except Exception as exc:  # a broker that cannot say: the depths are absent, not zero
        log.warning("cannot read queue depths from the broker: %s", exc)
        return Depths(found, up=False)
    return Depths(found)


def _depth(conn: Any, channel: Any, queue: str) -> tuple[int, Any]:
    """One queue's depth, and the channel to ask the next one on (AMQP closes a channel on NOT_FOUND)."""
    if hasattr(channel, "_size"):  # kombu's virtual transports (Redis): the list's length
        return int(channel._size(queue)), channel
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count), channel
    except Exception as exc:
        if "NOT_FOUND" in str(exc) or "404" in str(exc):
            return 0, conn.channel()
        raise
