"""Users see a stable error code, never a traceback: from the API, the client and the CLI."""

from __future__ import annotations

import http.server
import threading

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from bus.db import make_engine
from bus.settings import Settings
from coordinator.api.deps import Services
from coordinator.api.server import create_app
from coordinator.client import ApiError, Client
from coordinator.definitions import Registry
from ecosystem.cli import app as cli
from tests.support.harness import Clock, RecordingPublisher


def api(engine) -> TestClient:
    services = Services(engine, RecordingPublisher(Clock()), Registry.builtin(), Settings(broker_url="memory://").checked())
    return TestClient(create_app(services), raise_server_exceptions=False)


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/no/such/route", 404, "not_found"),
    ("DELETE", "/api/intents", 405, "method.not_allowed"),
    ("GET", "/api/runs/nope", 404, "run.unknown"),
    ("GET", "/api/runs/nope/bus-events", 404, "run.unknown"),
    ("GET", "/api/runs/nope/messages", 404, "run.unknown"),
    ("POST", "/api/intents", 422, "request.invalid"),
])
def test_api_errors_have_a_code(sqlite_engine, method, path, status, code):
    answer = api(sqlite_engine).request(method, path, json={})
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code


def test_unknown_intent_lists_the_known_ones(sqlite_engine):
    answer = api(sqlite_engine).post("/api/intents", json={"tenant": "t", "intent": "nope"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "intent.unknown" and "codegen" in answer.json()["error"]["message"]


def test_a_ledger_that_cannot_answer_is_a_503(tmp_path):
    unmigrated = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    answer = api(unmigrated).get("/api/runs")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "ledger.unavailable"


def test_client_says_when_the_server_is_not_a_cogo_api():
    class Plain(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}") as client, pytest.raises(ApiError) as err:
            client.run("x")
        assert err.value.code == "api.bad_response"
    finally:
        server.shutdown()


def test_cli_replay_errors_are_codes_not_tracebacks(tmp_path):
    runner = CliRunner()
    env = {"COGO_DATABASE_URL": f"sqlite:///{tmp_path / 'never-migrated.db'}", "COGO_HOME": str(tmp_path)}
    unmigrated = runner.invoke(cli, ["replay", "some-run"], env=env)
    assert unmigrated.exit_code == 1 and "error [ledger.unavailable]" in unmigrated.output
    missing = runner.invoke(cli, ["replay", "some-run", "--definition", str(tmp_path / "nope.yaml")], env=env)
    assert missing.exit_code == 1 and "error [" in missing.output and "Traceback" not in missing.output


def test_orchestrator_plan_is_a_dry_run_and_state_explains(sqlite_engine):
    from sqlalchemy import func, select

    from coordinator.schema import runs

    client = api(sqlite_engine)
    planned = client.post("/api/orchestrator/plan", json={"tenant": "t", "intent": "echo"})
    assert planned.status_code == 200
    body = planned.json()
    assert body["workflow"] == "single-task"
    assert [d["type"] for d in body["decisions"]] == ["INITIALIZE_WORKFLOW", "CREATE_TOKEN", "DISPATCH_TOKEN"]
    assert body["events"][0]["type"] == "decision.routing.start"
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == 0  # nothing was written

    started = client.post("/api/orchestrator/execute", json={"tenant": "t", "intent": "echo"})
    assert started.status_code == 202
    state = client.get("/api/orchestrator/state", params={"run_id": started.json()["id"]}).json()
    assert state["run"]["status"] == "pending" and state["tokens"] == [] and "explain" in state
