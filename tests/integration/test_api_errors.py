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
from tests.support.api import make_key
from tests.support.harness import Clock, RecordingPublisher

DOCUMENTS = {"documents": [{"id": "d1", "text": "hello"}]}


def api(engine, key: str | None = None) -> TestClient:
    """The API over ``engine``, called with an admin key (made here unless given)."""
    services = Services(engine, RecordingPublisher(Clock()), Registry.builtin(), Settings(broker_url="memory://").checked())
    key = key or make_key(engine, "t", ["admin"])
    return TestClient(create_app(services), raise_server_exceptions=False, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/no/such/route", 404, "not_found"),
    ("DELETE", "/api/intents", 405, "method.not_allowed"),
    ("PUT", "/api/runs/nope", 405, "method.not_allowed"),
    ("GET", "/api/runs/nope", 404, "run.unknown"),
    ("GET", "/api/runs/nope/bus-events", 404, "run.unknown"),
    ("GET", "/api/runs/nope/messages", 404, "run.unknown"),
    ("GET", "/api/runs/nope/explain", 404, "run.unknown"),
    ("GET", "/api/orchestrator/state?run_id=nope", 404, "run.unknown"),
    ("GET", "/api/dead-letters/nope", 404, "dead_letter.not_found"),
    ("GET", "/api/runs?limit=0", 422, "request.invalid"),
    ("POST", "/api/approvals/nope/approve", 404, "approval.unknown"),
    ("POST", "/api/runs/nope/cancel", 404, "run.unknown"),
    ("POST", "/api/intents", 422, "request.invalid"),
    ("GET", "/static/no-such-asset.js", 404, "not_found"),
    ("POST", "/static/swagger-ui/swagger-ui.css", 405, "method.not_allowed"),
    ("POST", "/docs", 405, "method.not_allowed"),
])
def test_api_errors_have_a_code(sqlite_engine, method, path, status, code):
    answer = api(sqlite_engine).request(method, path, json={})
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"error"}
    assert set(answer.json()["error"]) == {"code", "message", "retryable", "details"}
    assert answer.json()["error"]["code"] == code


def test_a_wrong_method_says_which_methods_are_allowed(sqlite_engine):
    answer = api(sqlite_engine).delete("/api/intents")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"


@pytest.mark.parametrize("body, field", [
    (b'{"tenant": "t"}', "intent"),
    (b'{"tenant": "t", "intent": "echo", "payload": {"a": 1}, "budget": {"maxTokens": -1}}', "budget.maxTokens"),
    (b'{"tenant": "t", "intent": "echo", "payload": [1]}', "payload"),
])
def test_a_malformed_request_names_the_field(sqlite_engine, body, field):
    answer = api(sqlite_engine).post("/api/intents", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "request.invalid"
    assert error["message"].startswith(f"{field}: ") and error["details"]["errors"][0]["field"] == field


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"", b'{"tenant": "t", "intent": "echo", "payload": NaN}'])
def test_a_body_that_is_not_a_json_object_is_refused_with_the_error_body(sqlite_engine, body):
    answer = api(sqlite_engine).post("/api/intents", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "request.invalid" and answer.json()["error"]["message"]


def test_unknown_intent_lists_the_known_ones(sqlite_engine):
    answer = api(sqlite_engine).post("/api/intents", json={"tenant": "t", "intent": "nope"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "intent.unknown" and "codegen" in answer.json()["error"]["message"]


def test_a_ledger_that_cannot_answer_is_a_503(tmp_path):
    unmigrated = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    answer = api(unmigrated, key="cogo_k000000000000_not-a-real-key").get("/api/runs")
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
    planned = client.post("/api/orchestrator/plan", json={"tenant": "t", "intent": "embed", "payload": DOCUMENTS})
    assert planned.status_code == 200
    body = planned.json()
    assert body["workflow"] == "single-task"
    assert [d["type"] for d in body["decisions"]] == ["INITIALIZE_WORKFLOW", "CREATE_TOKEN", "DISPATCH_TOKEN"]
    assert body["events"][0]["type"] == "decision.routing.start"
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == 0  # nothing was written

    started = client.post("/api/orchestrator/execute", json={"tenant": "t", "intent": "embed", "payload": DOCUMENTS})
    assert started.status_code == 202
    state = client.get("/api/orchestrator/state", params={"run_id": started.json()["id"]}).json()
    assert state["run"]["status"] == "pending" and state["tokens"] == [] and "explain" in state
