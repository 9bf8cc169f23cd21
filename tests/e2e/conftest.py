"""Real fleets for end-to-end tests: separate processes on a real broker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bus.settings import Settings
from ecosystem.processes import PROCESSES, Process

WORKFLOWS = Path(__file__).with_name("workflows")
SLOW_WORKER = Process("test-slow-worker", "celery", "tests.support.slow_worker:main", "test.slow for fault tests",
                      routes=(("test", "slow"),))
TABLE = (*PROCESSES, SLOW_WORKER)
CORE = ["orchestrator-chat", "cogo-orchestrator-brain", "cogo-executor-dispatcher", "cogo-bus-reclaimer"]


def fleet_settings(tmp_path: Path, *, broker_url: str = "", database_url: str = "", **overrides) -> Settings:
    """Settings for a test fleet under ``tmp_path`` with quick reclaim timings."""
    base = Settings(home=tmp_path / "home", broker_url=broker_url, database_url=database_url, lease_s=3.0,
                    stale_s=1.0, reclaim_interval_s=0.3, workflows_dir=WORKFLOWS, log_level="WARNING")
    return replace(base, **overrides).checked()


@pytest.fixture
def e2e_env():
    """Environment for every child of a test fleet."""
    return {"PYTHONUNBUFFERED": "1"}
