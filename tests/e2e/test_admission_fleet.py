"""Concurrency slots with real processes: a slot held by a worker killed with -9 is freed when its lease is taken
back — never leaked — and the assignment that waited for it runs."""

from __future__ import annotations

import signal

import pytest
from rich.console import Console

from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_a_slot_held_by_a_killed_worker_is_freed_and_the_waiting_assignment_runs(tmp_path, owned_redis):
    marks_a, marks_b = tmp_path / "a", tmp_path / "b"
    marks_a.mkdir()
    marks_b.mkdir()
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url)
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.policy_path.write_text("tenants: {acme: {maxConcurrent: 1}}\n")
    quiet = {"console": Console(quiet=True), "show_logs": False, "processes": TABLE}
    with Fleet(settings, only=CORE, free_ports=True, **quiet) as fleet, \
            Client(fleet.api_url, api_key=fleet.api_key) as client:
        with Fleet(fleet.settings, only=["test-slow-worker"], **quiet) as doomed:
            a = client.submit("slow", tenant="acme", payload={"marks_dir": str(marks_a), "sleep_s": 60})
            wait_until(lambda: (marks_a / "starts").exists(), timeout=30, message="run a's first attempt to start")
            b = client.submit("slow", tenant="acme", payload={"marks_dir": str(marks_b), "sleep_s": 0})
            wait_until(lambda: "tenant acme is at its limit of 1 concurrent assignments"
                       in client.explain(b)["summary"], timeout=30, message="run b to wait for acme's slot")
            worker = doomed.children[0]
            worker.signal_group(signal.SIGKILL)
            wait_until(lambda: worker.poll() is not None, timeout=10, message="the worker to die")
        with Fleet(fleet.settings, only=["test-slow-worker"], **quiet):
            runs = [client.wait(r, timeout_s=90) for r in (a, b)]
            deferred = [e for e in client.bus_events(b) if e["kind"] == "execute_deferred"]
            audit_a = [e["kind"] for e in client.bus_events(a)]
    assert [r["status"] for r in runs] == ["completed", "completed"], runs
    assert deferred and deferred[0]["detail"]["code"] == "concurrency.tenant"
    assert "lease_expired" in audit_a  # the dead worker's slot came back through its lease, nothing else
    assert (marks_b / "ends").exists()
