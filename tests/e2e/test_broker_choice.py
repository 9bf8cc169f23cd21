"""A process started by hand joins the fleet's broker, or refuses to start: never a broker nobody chose."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import redis

from bus.celery_app import make_celery
from bus.errors import ConfigError
from bus.settings import Settings
from ecosystem.launcher import BROKER_URL_FILE, Fleet, recorded_broker
from tests.e2e.conftest import fleet_settings
from tests.support.waiting import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _process(name: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
    env.update(COGO_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "ecosystem.cli", "process", name], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_no_broker_is_a_clear_error_not_celerys_default_amqp(tmp_path):
    with pytest.raises(ConfigError, match="COGO_BROKER_URL is empty"):
        make_celery(Settings(home=tmp_path).checked(), name="nobody")
    done = _process("cogo-orchestrator-brain", tmp_path)
    assert done.returncode == 1
    assert "error [config.invalid]: COGO_BROKER_URL is empty" in done.stderr and "Traceback" not in done.stderr


def test_a_running_cogo_up_records_its_embedded_broker_for_processes_started_by_hand(tmp_path):
    settings = fleet_settings(tmp_path)
    with Fleet(settings, only=["cogo-bus-reclaimer"], free_ports=True, show_logs=False) as fleet:
        path = fleet.settings.home / BROKER_URL_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        joined = recorded_broker(Settings(home=fleet.settings.home).checked())
        assert joined.broker_url == fleet.settings.broker_url
        # A brain started by hand on that home connects to the fleet's broker (its clients grow) and stays up.
        broker = redis.Redis.from_url(fleet.settings.broker_url)
        before = len(broker.client_list())
        env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
        env.update(COGO_HOME=str(fleet.settings.home), COGO_DATABASE_URL=fleet.settings.database_url)
        brain = subprocess.Popen([sys.executable, "-m", "ecosystem.cli", "process", "cogo-orchestrator-brain"],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: len(broker.client_list()) > before, timeout=30,
                       message="the hand-started brain did not connect to the fleet's broker")
            assert brain.poll() is None
        finally:
            brain.terminate()
            brain.wait(20)
    assert not path.exists()  # the fleet stopped: nothing left to join
