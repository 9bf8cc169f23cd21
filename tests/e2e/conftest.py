"""Real fleets for end-to-end tests: separate processes on a real broker."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from bus.settings import Settings
from ecosystem.processes import PROCESSES, Process
from tests.support.services import REDIS_URL, require

WORKFLOWS = Path(__file__).with_name("workflows")
SLOW_WORKER = Process("test-slow-worker", "celery", "tests.support.slow_worker:main", "test.slow for fault tests",
                      routes=(("test", "slow"),))
TABLE = (*PROCESSES, SLOW_WORKER)
CORE = ["orchestrator-chat", "cogo-orchestrator-brain", "cogo-executor-dispatcher", "cogo-bus-reclaimer"]


_TAKEN: list[str] = []
"""Databases of the machine's Redis that this session found empty and used; emptied again at its end."""


def machine_redis() -> str:
    """An empty database of the machine's Redis for one test: never one that holds someone else's keys.

    The test owns what it writes there; the session removes it at its end (``_give_back_redis``).
    """
    require("Redis", "127.0.0.1", 6379)
    base = REDIS_URL.rsplit("/", 1)[0]
    for db in random.sample(range(1, 16), 15):
        url = f"{base}/{db}"
        if url not in _TAKEN and redis.Redis.from_url(url).dbsize() == 0:
            _TAKEN.append(url)
            return url
    pytest.fail("no empty database on the machine's Redis (1-15): the tests will not write into one in use")


@pytest.fixture(scope="session", autouse=True)
def _give_back_redis():
    """Empty again the databases this session took (they were empty when taken: every key is ours)."""
    yield
    for url in _TAKEN:
        redis.Redis.from_url(url).flushdb()


def fleet_settings(tmp_path: Path, *, broker_url: str = "", database_url: str = "", **overrides) -> Settings:
    """Settings for a test fleet under ``tmp_path`` with quick reclaim timings."""
    base = Settings(home=tmp_path / "home", broker_url=broker_url, database_url=database_url, lease_s=3.0,
                    stale_s=1.0, reclaim_interval_s=0.3, workflows_dir=WORKFLOWS, log_level="WARNING")
    return replace(base, **overrides).checked()


@pytest.fixture
def e2e_env():
    """Environment for every child of a test fleet."""
    return {"PYTHONUNBUFFERED": "1"}
