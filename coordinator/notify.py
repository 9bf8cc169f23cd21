"""Notifications (notify nodes, approval requests) on a Redis channel after commit."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bus.settings import Settings


def redis_notifier(settings: Settings) -> Callable[[str, Any], None] | None:
    """A function publishing JSON on a Redis channel, or None when the broker is not Redis."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(settings.broker_url)

    def notify(channel: str, message: Any) -> None:
        client.publish(channel, json.dumps(message, default=str))

    return notify
