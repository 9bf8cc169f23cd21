"""The command line end to end: ``cogo up`` and ``cogo demo`` as a user runs them, on the embedded default."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from coordinator.client import Client
from tests.support.running import Running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def Cli(args: list[str], home: Path) -> Running:  # noqa: N802 - reads as the command it starts
    """``cogo <args>`` as its own process under ``home``, with no COGO_* variable of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
    env.update(COGO_HOME=str(home), COLUMNS="200", PYTHONUNBUFFERED="1")
    return Running([sys.executable, "-m", "ecosystem.cli", *args], env, cwd=ROOT)


def fleet_processes(home: Path) -> list[psutil.Process]:
    """Every live process started for the fleet under ``home`` (they all carry its COGO_HOME)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("COGO_HOME") == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def client_for(api: str, home: Path) -> Client:
    """A client of the fleet under ``home`` with the admin key ``cogo up`` keeps there (the API asks for one)."""
    return Client(api, api_key=(home / "admin.key").read_text().strip())


def test_cogo_up_serves_a_workflow_and_stops_cleanly_on_sigterm(tmp_path):
    home = tmp_path / ".cogo"
    up = Cli(["up", "--free-ports"], home)
    try:
        wait_until(lambda: "cogo is up" in up.output or up.proc.poll() is not None, timeout=120,
                   message="cogo up to be healthy")
        assert up.proc.poll() is None, up.output
        api = re.search(r"^API +(http://\S+)", up.output, re.MULTILINE).group(1)
        assert "(embedded)" in up.output
        children = psutil.Process(up.proc.pid).children(recursive=True)
        assert len(children) >= 12  # eleven processes of the table and the embedded redis-server
        flower_url, user, password = re.search(r"^flower: (http://\S+)  \(user (\S+), password (\S+);",
                                               up.output, re.MULTILINE).groups()
        assert (user, password) == ("cogo", (home / "flower.password").read_text().strip())
        assert httpx.get(f"{flower_url}/api/workers", timeout=30).status_code == 401
        assert httpx.get(f"{flower_url}/api/workers", auth=(user, password), timeout=30).status_code == 200
        assert (home / "redis" / "password").read_text().strip() not in up.output
        # the dashboard's URL is printed; its output is not a terminal, so the admin key is not in it
        assert re.search(r"^Dashboard +" + re.escape(api) + r"/ui/", up.output, re.MULTILINE), up.output
        assert (home / "admin.key").read_text().strip() not in up.output
        assert httpx.get(f"{api}/ui/", timeout=30).status_code == 200
        with client_for(api, home) as client:
            run_id = client.submit("codegen", tenant="e2e", payload={"spec": "a function add(a, b) returning a + b"})
            run = client.wait(run_id, timeout_s=120)
            types = [e["type"] for e in client.events(run_id)]
        assert run["status"] == "completed", run
        assert types[0] == "decision.routing.start" and types[-1] == "operation.workflow.complete"
        up.proc.send_signal(signal.SIGTERM)
        assert up.wait(timeout_s=60) == 0, up.output
        assert "fleet stopped" in up.output
        assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert fleet_processes(home) == []
    finally:
        up.kill()


def test_cogo_demo_completes_a_real_workflow_and_shows_its_trace(tmp_path):
    home = tmp_path / ".cogo"
    demo = Cli(["demo"], home)
    try:
        code = demo.wait(timeout_s=300)
        assert code == 0, demo.output
        assert re.search(r"^run \S+ completed", demo.output, re.MULTILINE), demo.output
        assert "decision.routing.start" in demo.output
        assert "operation.workflow.complete" in demo.output
        assert "fleet stopped" in demo.output
        assert fleet_processes(home) == []
    finally:
        demo.kill()
