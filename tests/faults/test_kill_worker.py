"""``kill -9`` the worker process while it holds an assignment: the assignment still completes exactly once."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest
from rich.console import Console

from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_worker_killed_mid_assignment_completes_exactly_once(tmp_path, owned_redis):
    marks = tmp_path / "marks"
    marks.mkdir()
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url)
    quiet = {"console": Console(quiet=True), "show_logs": False, "processes": TABLE}
    with Fleet(settings, only=CORE, free_ports=True, **quiet) as fleet:
        with Fleet(fleet.settings, only=["test-slow-worker"], **quiet) as doomed:
            with Client(fleet.api_url, api_key=fleet.api_key) as client:
                run_id = client.submit("slow", tenant="acme", payload={"marks_dir": str(marks), "sleep_s": 60})
                wait_until(lambda: (marks / "starts").exists(), timeout=30, message="the first attempt to start")
                worker = doomed.children[0]
                worker.signal_group(signal.SIGKILL)
                wait_until(lambda: worker.poll() is not None, timeout=10, message="the worker to die")
        with Fleet(replace(fleet.settings), only=["test-slow-worker"], **quiet):
            with Client(fleet.api_url, api_key=fleet.api_key) as client:
                run = client.wait(run_id, timeout_s=60)
                audit = [b["kind"] for b in client.bus_events(run_id)]
                completed = client.events(run_id, type="decision.task.completed")
    assert run["status"] == "completed", run
    starts = (marks / "starts").read_text().splitlines()
    ends = (marks / "ends").read_text().splitlines()
    assert [s.split()[1] for s in starts] == ["1", "2"]
    assert [e.split()[1] for e in ends] == ["2"]  # the killed attempt never finished; the second did, once
    assert audit == ["execute_enqueued", "lease_expired", "execute_enqueued", "execute_done"]
    assert len(completed) == 1
