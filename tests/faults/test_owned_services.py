"""The servers fault tests own: a redis-server and a PostgreSQL cluster that a test may flush, restart or cut."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

pytestmark = pytest.mark.e2e


def test_owned_redis_flushes_and_restarts_on_the_same_url(owned_redis):
    client = redis.Redis.from_url(owned_redis.url)
    client.set("k", "v")
    owned_redis.flush()
    assert client.get("k") is None
    client.set("k", "v")
    url = owned_redis.url
    owned_redis.restart()
    assert owned_redis.url == url
    assert redis.Redis.from_url(url).get("k") is None  # it keeps nothing on disk: a restart loses the queue


def test_owned_postgres_cuts_connections_and_restarts(owned_postgres):
    engine = create_engine(owned_postgres.url, pool_pre_ping=False)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert owned_postgres.terminate_backends() >= 1
        with pytest.raises(OperationalError):
            conn.execute(text("SELECT 1"))
    owned_postgres.restart(down_s=0.2)
    engine.dispose()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
