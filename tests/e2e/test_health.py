"""``cogo health <process>``, the containers' health check, against real processes: each kind answers while it
does its job (the API over HTTP, a consumer to a ping through the broker, a loop by ticking) and not after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ecosystem.launcher import Fleet
from tests.e2e.conftest import fleet_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

COGO = str(Path(sys.executable).with_name("cogo"))
PROCESSES = ["orchestrator-chat", "cogo-orchestrator-brain", "cogo-bus-reclaimer"]


def health(fleet: Fleet, name: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
    env.update(fleet.settings.to_env())
    child = next(c for c in fleet.children if c.process.name == name)
    env["COGO_READY_FILE"] = str(child.ready_file)  # where the container's loop process touches its file
    return subprocess.run([COGO, "health", name], env=env, capture_output=True, text=True, timeout=60)


def test_each_kind_is_healthy_while_it_works_and_unhealthy_once_it_stops(tmp_path, owned_redis):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url)
    with Fleet(settings, only=PROCESSES, free_ports=True, console=Console(quiet=True), show_logs=False) as fleet:
        for name in PROCESSES:
            done = health(fleet, name)
            assert (done.returncode, done.stdout.strip()) == (0, f"{name}: healthy"), done.stderr
        for name, why in (("cogo-orchestrator-brain", "no consumer cogo-orchestrator-brain@"),
                          ("orchestrator-chat", "/healthz")):
            child = next(c for c in fleet.children if c.process.name == name)
            child.signal_group(signal.SIGKILL)
            wait_until(lambda c=child: c.poll() is not None, timeout=30, message=f"{name} to die")
            done = health(fleet, name)
            assert done.returncode == 1 and f"{name}: unhealthy" in done.stderr and why in done.stderr, done
        reclaimer = next(c for c in fleet.children if c.process.name == "cogo-bus-reclaimer")
        reclaimer.signal_group(signal.SIGSTOP)  # hung: it no longer ticks
        try:
            stale = reclaimer.ready_file.stat().st_mtime - 60
            os.utime(reclaimer.ready_file, (stale, stale))  # its last tick, as the clock will see it a minute on
            done = health(fleet, "cogo-bus-reclaimer")
            assert done.returncode == 1 and "(more than 30s)" in done.stderr, done
        finally:
            reclaimer.signal_group(signal.SIGCONT)
        wait_until(lambda: health(fleet, "cogo-bus-reclaimer").returncode == 0, timeout=30,
                   message="the reclaimer's next tick to make it healthy again")
