"""What ``cogo up``'s supervision knows reaches the operator: restarts and a crash loop, reported by the API
(``GET /api/fleet``), ``/metrics`` and ``cogo status`` of a real fleet whose reclaimer is killed again and again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from coordinator.client import Client
from ecosystem.launcher import Fleet
from ecosystem.supervision import RestartPolicy
from tests.e2e.conftest import fleet_settings
from tests.support.supervised import supervised
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

COGO = str(Path(sys.executable).with_name("cogo"))
RECLAIMER = "cogo-bus-reclaimer"
QUICK = RestartPolicy(initial_s=0.2, max_s=1.0, window_s=120.0, crash_loop_deaths=3)


def supervision(client: Client) -> dict:
    return client.fleet()["supervision"]["processes"][RECLAIMER]


def cogo_status(fleet: Fleet) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
    env.update(COGO_API_URL=fleet.api_url, COGO_API_KEY=fleet.api_key or "", COLUMNS="300")
    done = subprocess.run([COGO, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return next(line for line in done.stdout.splitlines() if line.strip().lstrip("│ ").startswith(RECLAIMER))


def metric(fleet: Fleet, family: str) -> str:
    text = httpx.get(f"{fleet.metrics_url}/metrics", headers={"Authorization": f"Bearer {fleet.api_key}"},
                     timeout=30).text
    return next(line for line in text.splitlines() if line.startswith(family) and f'copy="{RECLAIMER}"' in line)


def kill_and_wait(fleet: Fleet, *, restarted: bool) -> None:
    child = next(c for c in fleet.children if c.label == RECLAIMER)
    old = child.pid
    child.signal_group(signal.SIGKILL)
    if restarted:
        wait_until(lambda: child.pid != old and child.poll() is None and child.is_ready(), timeout=60,
                   message="the reclaimer to be restarted")
    else:
        wait_until(lambda: RECLAIMER in fleet.crash_looping, timeout=60, message="the crash loop to be noticed")


def test_restarts_and_a_crash_loop_are_reported_by_the_api_the_metrics_and_the_cli(tmp_path, owned_redis):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url)
    with Fleet(settings, only=["orchestrator-chat", "cogo-metrics-server", RECLAIMER], free_ports=True,
               console=Console(quiet=True), show_logs=False, restart_policy=QUICK) as fleet, supervised(fleet):
        with Client(fleet.api_url, api_key=fleet.api_key) as client:
            assert supervision(client)["state"] == "running" and supervision(client)["restarts"] == 0
            kill_and_wait(fleet, restarted=True)
            entry = wait_until(lambda: (e := supervision(client))["restarts"] == 1 and e, timeout=30,
                               message="the restart in the report")
            assert (entry["state"], entry["last_exit_code"]) == ("running", -9)
            assert "up" in cogo_status(fleet) and "1 restart(s)" in cogo_status(fleet)
            assert metric(fleet, "cogo_process_restarts_total").endswith(" 1.0")

            kill_and_wait(fleet, restarted=True)
            kill_and_wait(fleet, restarted=False)  # the third death within the window: crash-looping
            entry = wait_until(lambda: (e := supervision(client))["state"] == "crash_looping" and e, timeout=30,
                               message="the crash loop in the report")
            assert entry["restarts"] == 2
            line = cogo_status(fleet)
            assert "crash-looping" in line and "gave up after 2 restart(s)" in line
            assert metric(fleet, "cogo_process_crash_looping").endswith(" 1.0")
            assert metric(fleet, "cogo_process_restarts_total").endswith(" 2.0")
    assert not (fleet.settings.home / "run" / "supervision.json").exists()  # no stale report once stopped
