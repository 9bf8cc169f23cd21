"""The agent registry with real processes: workers register, heartbeat and unregister; ``GET /api/agents`` and
``cogo agents`` show them; a ``kill -9`` leaves a worker gone; and the ``agents`` admission policy end to end —
an undeclared route fails at once, a route whose only worker stopped waits visibly and then fails, and a worker
started while work waits runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bus.db import make_engine
from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.api import make_key
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

COGO = str(Path(sys.executable).with_name("cogo"))
WAIT_S = 20.0
"""COGO_AGENT_WAIT_S of the test fleet: long enough to start a worker while work waits."""
POLICIES = "models,budgets,coordinator.admission.agents:AgentsPolicy"
QUIET = {"console": Console(quiet=True), "show_logs": False, "processes": TABLE}


class Registry:
    """The core fleet, its admin key, and what it says about agents."""

    def __init__(self, fleet: Fleet, key: str, marks: Path):
        self.fleet, self.key, self.marks = fleet, key, marks

    def client(self) -> Client:
        return Client(self.fleet.api_url, api_key=self.key)

    def workers(self) -> Fleet:
        """A slow worker process of its own (``test.slow``), stopped with SIGTERM when the block ends."""
        return Fleet(self.fleet.settings, only=["test-slow-worker"], **QUIET)

    def slow_agents(self) -> list[dict]:
        with self.client() as client:
            return [a for a in client.agents()["agents"] if a["routes"] == ["test.slow"]]

    def agent(self, pid: int) -> dict | None:
        return next((a for a in self.slow_agents() if a["pid"] == pid), None)

    def cogo_agents(self) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
        env.update(COGO_API_URL=self.fleet.api_url, COGO_HOME=str(self.fleet.settings.home), COLUMNS="240")
        done = subprocess.run([COGO, "agents"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stdout
        return done.stdout

    def submit(self, workflow: str) -> str:
        with self.client() as client:
            return client.submit(workflow, tenant="acme", payload={"marks_dir": str(self.marks), "sleep_s": 0})


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("agents")
    marks = root / "marks"
    marks.mkdir()
    settings = fleet_settings(root, agent_heartbeat_s=0.5, agent_wait_s=WAIT_S, admission_policies=POLICIES)
    with Fleet(settings, only=CORE, free_ports=True, **QUIET) as fleet:
        key = getattr(fleet, "api_key", None)
        if key is None:  # an admin key in the fleet's ledger, where cogo looks
            engine = make_engine(fleet.settings.database_url)
            key = make_key(engine, "ops")
            engine.dispose()
            (fleet.settings.home / "admin.key").write_text(key)
            (fleet.settings.home / "admin.key").chmod(0o600)
        yield Registry(fleet, key, marks)


def test_a_worker_is_listed_while_it_runs_and_shown_gone_after_kill_9(registry):
    with registry.workers() as workers:
        worker = workers.children[0]
        mine = wait_until(lambda: registry.agent(worker.pid), timeout=60, message="the worker to register")
        assert (mine["state"], mine["alive"], mine["capacity"], mine["version"]) == ("idle", True, 1, "1")
        assert mine["agent_id"].startswith("test-slow-worker@") and mine["agent_id"].endswith(f":{worker.pid}")
        shown = registry.cogo_agents()
        row = next(line for line in shown.splitlines() if mine["agent_id"] in line)
        assert "test.slow" in row and "idle" in row and "any" in row, shown
        assert "test.slow: 1 live, capacity 1, any model" in shown, shown

        worker.signal_group(signal.SIGKILL)
        wait_until(lambda: worker.poll() is not None, timeout=10, message="the worker to die")
        gone = wait_until(lambda: (registry.agent(worker.pid) or {}).get("state") == "gone" and
                          registry.agent(worker.pid), timeout=30, message="the killed worker to be shown gone")
        assert gone["alive"] is False and gone["stopped_at"] is None
        row = next(line for line in registry.cogo_agents().splitlines() if mine["agent_id"] in line)
        assert "gone" in row


def test_a_cleanly_stopped_worker_unregisters(registry):
    with registry.workers() as workers:
        pid = workers.children[0].pid
        wait_until(lambda: registry.agent(pid), timeout=60, message="the worker to register")
    stopped = wait_until(lambda: (registry.agent(pid) or {}).get("state") == "stopped" and registry.agent(pid),
                         timeout=30, message="the stopped worker to say so")
    assert stopped["stopped_at"] is not None and stopped["alive"] is False


def test_a_route_no_agent_type_serves_fails_at_once(registry):
    run_id = registry.submit("agents-nope")
    with registry.client() as client:
        run = client.wait(run_id, timeout_s=60)
    assert run["status"] == "failed", run
    assert "agents.no_agent_type" in json.dumps(run["error"]), run


def test_work_for_a_stopped_route_waits_visibly_then_fails_and_runs_when_a_worker_comes(registry):
    with registry.workers() as workers:  # test.slow becomes known, then its only worker stops
        wait_until(lambda: registry.agent(workers.children[0].pid), timeout=60, message="the worker to register")
    assert not any(a["alive"] for a in registry.slow_agents())

    abandoned = registry.submit("slow")
    with registry.client() as client:
        why = wait_until(lambda: "no live agent serves test.slow" in json.dumps(client.explain(abandoned)) and
                         client.explain(abandoned), timeout=60, message="explain to say the run waits for an agent")
        assert f"waiting up to {WAIT_S:g} s" in json.dumps(why)
        run = client.wait(abandoned, timeout_s=WAIT_S + 60)
    assert run["status"] == "failed", run
    assert "agents.no_available_agent" in json.dumps(run["error"]), run

    rescued = registry.submit("slow")
    with registry.client() as client:
        wait_until(lambda: "no live agent serves test.slow" in json.dumps(client.explain(rescued)), timeout=60,
                   message="the second run to wait for an agent")
        with registry.workers():
            run = client.wait(rescued, timeout_s=WAIT_S + 60)
    assert run["status"] == "completed", run
