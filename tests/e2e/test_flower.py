"""Flower sees the whole fleet, behind basic auth; the fleet's secrets stay where they belong.

One real fleet (every process of the table, two shards, the embedded Redis with its password) serves the
whole module: a workflow runs, then Flower's own HTTP API is asked what it sees.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from rich.console import Console
from sqlalchemy import select

from bus.db import make_engine
from bus.schema import agent_messages
from coordinator.client import Client
from ecosystem.flower import routed_queues
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES
from tests.e2e.conftest import fleet_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2
LLM_KEY = "sk-test-only-codegen-may-see-this-" + os.urandom(6).hex()
CELERY_PROCESSES = [p for p in PROCESSES if p.kind == "celery"]


def _client(fleet: Fleet) -> Client:
    return Client(fleet.api_url, api_key=fleet.api_key)  # the launcher keeps the fleet's admin key in its home


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The whole table on the embedded Redis, with an LLM key configured (the local model ignores it)."""
    tmp = tmp_path_factory.mktemp("flower")
    settings = fleet_settings(tmp, shards=SHARDS, llm_api_key=LLM_KEY, log_level="INFO")
    console = io.StringIO()
    with Fleet(settings, free_ports=True, cwd=ROOT, console=Console(file=console, width=200),
               show_logs=False, ready_timeout_s=120, env={"PYTHONUNBUFFERED": "1"}) as running:
        assert running.api_key
        running.console_text = console  # what the launcher printed, for the secrets test
        yield running


@pytest.fixture(scope="module")
def run_id(fleet):
    """A codegen run (brain, dispatcher, codegen and build-test workers), completed."""
    with _client(fleet) as client:
        run = client.submit("codegen", tenant="flower", payload={"spec": "a function add(a, b) returning a + b"})
        assert client.wait(run, timeout_s=180)["status"] == "completed"
    return run


def _flower(fleet: Fleet, path: str, *, auth=None, **params) -> httpx.Response:
    return httpx.get(f"{fleet.flower_url}{path}", params=params, auth=auth or fleet.flower_auth, timeout=30)


def test_flower_refuses_its_ui_and_api_without_the_right_credentials(fleet):
    user, password = fleet.flower_auth
    assert user == "cogo" and len(password) >= 16
    for path in ("/api/workers", "/api/queues/length", "/api/tasks", "/", "/tasks"):
        assert httpx.get(f"{fleet.flower_url}{path}", timeout=30).status_code == 401, path
        assert _flower(fleet, path, auth=(user, password + "x")).status_code == 401, path
    assert _flower(fleet, "/api/workers").status_code == 200
    assert f"flower: {fleet.flower_url}  (user cogo, password {password}" in fleet.console_text.getvalue()


def test_flower_lists_every_celery_worker_process_of_the_table(fleet):
    expected = {f"{c.process.name}@{socket.gethostname()}.{c.pid}" for c in fleet.children
                if c.process.kind == "celery"}
    assert len(expected) == sum(p.copies(SHARDS) for p in CELERY_PROCESSES) == 8  # a brain and a dispatcher per shard

    def listed() -> set[str] | None:
        response = _flower(fleet, "/api/workers", refresh="1")
        workers = set(response.json()) if response.status_code == 200 else set()
        return workers if expected <= workers else None

    workers = wait_until(listed, timeout=60, interval=1.0, message="Flower to list every worker")
    assert workers == expected
    queues = {q["name"] for info in _flower(fleet, "/api/workers").json().values()
              for q in info.get("active_queues", [])}
    assert queues == set(routed_queues(SHARDS))


def test_flower_lists_every_routed_queue_of_every_shard_with_its_length(fleet):
    expected = routed_queues(SHARDS)
    assert {f"{service}.{role}.{shard}" for service, role in
            [("orchestrator", "decide"), ("orchestrator", "execute"), ("codegen", "generate"),
             ("code", "build-test"), ("rag", "embed"), ("kg", "build")] for shard in range(SHARDS)} == set(expected)

    def every_queue() -> dict[str, int] | None:  # Flower lists the queues of the workers it has inspected so far
        _flower(fleet, "/api/workers", refresh="1")
        response = _flower(fleet, "/api/queues/length")
        assert response.status_code == 200, response.text
        lengths = {q["name"]: q["messages"] for q in response.json()["active_queues"]}
        return lengths if set(expected) <= set(lengths) else None

    lengths = wait_until(every_queue, timeout=60, interval=1.0, message="Flower to list every routed queue")
    assert all(isinstance(lengths[q], int) and lengths[q] >= 0 for q in expected)


def test_flower_lists_the_tasks_of_a_run(fleet, run_id):
    engine = make_engine(fleet.settings.database_url)
    try:
        with engine.connect() as conn:
            ids = set(conn.execute(select(agent_messages.c.id).where(agent_messages.c.run_id == run_id)).scalars())
    finally:
        engine.dispose()
    assert ids

    def seen() -> dict | None:
        tasks = _flower(fleet, "/api/tasks", limit="10000").json()
        found = {mid: t for t in tasks.values() for mid in ids if mid in str(t.get("args"))}
        return tasks if set(found) == ids else None

    tasks = wait_until(seen, timeout=60, interval=1.0, message="Flower's Tasks to show every message of the run")
    mine = [t for t in tasks.values() if any(mid in str(t.get("args")) for mid in ids)]
    assert {"cogo.decide", "cogo.execute", "cogo.work"} <= {t["name"] for t in mine}
    assert {t["state"] for t in mine} == {"SUCCESS"}
    workers = {t["worker"] for t in mine}
    assert any(w.startswith("cogo-codegen-service@") for w in workers)
    assert any(w.startswith("cogo-build-test-worker@") for w in workers)


def test_the_llm_key_reaches_the_codegen_process_only(fleet, run_id):
    holders = []
    for child in fleet.children:
        environ = psutil.Process(child.pid).environ()
        assert environ.get("COGO_HOME") == str(fleet.settings.home)
        if "COGO_LLM_API_KEY" in environ:
            holders.append(child.process.name)
            assert environ["COGO_LLM_API_KEY"] == LLM_KEY
        if "COGO_FLOWER_PASSWORD" in environ:
            assert child.process.name == "flower"
    assert holders == ["cogo-codegen-service"]


def test_no_log_and_no_launcher_line_shows_the_broker_password_or_the_llm_key(fleet, run_id):
    password = fleet.broker.password
    assert f":{password}@" in fleet.settings.broker_url
    texts = {"launcher": fleet.console_text.getvalue()}
    texts |= {p.stem: p.read_text(errors="replace") for p in (fleet.settings.home / "logs").glob("*.log")}
    assert "flower" in texts and "cogo-codegen-service" in texts
    for name, text in texts.items():
        assert password not in text, name
        assert LLM_KEY not in text, name
    assert re.search(r"broker redis://:\*\*@127\.0\.0\.1:\d+/0 \(embedded\)", texts["launcher"])


def test_the_embedded_redis_refuses_clients_without_its_password(fleet):
    port = fleet.broker.port
    stranger = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            stranger.set("stranger", "was here")  # a write, refused
        with pytest.raises(redis.AuthenticationError):
            stranger.keys("*")
    finally:
        stranger.close()
    pids = [c.pid for c in fleet.children]
    done = subprocess.run([sys.executable, "-m", "celery", "-b", f"redis://127.0.0.1:{port}/0", "control",
                           "--timeout=2", "shutdown"], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("COGO_")})
    assert done.returncode != 0
    assert "Authentication required" in done.stdout + done.stderr or "NOAUTH" in done.stdout + done.stderr
    fleet.check_alive()
    assert all(psutil.Process(pid).is_running() for pid in pids)
    with redis.Redis.from_url(fleet.settings.broker_url) as owner:
        assert owner.ping()
