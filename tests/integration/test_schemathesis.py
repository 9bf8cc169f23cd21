"""Schemathesis against the published OpenAPI document, over real HTTP, every operation, with a key.

No input may answer 5xx, and no answer may contradict the schema (status, content type, body, headers).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings

from bus.db import make_engine
from bus.migrate import upgrade
from coordinator.api.deps import Services
from coordinator.api.server import create_app
from tests.support.api import make_key
from tests.support.harness import Fleet, registry_of

ASK = """
name: ask
start: gate
nodes:
  gate: {kind: approval, prompt: "ship?", approve: done, reject: done}
  done: {kind: end}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """The real API app served by uvicorn on a free port, over a fresh SQLite ledger."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'ledger.db'}")
    upgrade(engine)
    fleet = Fleet(engine, {}, registry=registry_of(ASK, builtin=True))
    app = create_app(Services(engine=engine, publisher=fleet.publisher, registry=fleet.registry,
                              settings=fleet.settings))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", make_key(engine, "fuzz", ["admin"])
    server.should_exit = True
    thread.join(10)
    engine.dispose()


@pytest.fixture(scope="module")
def api_schema(api_server):
    """The OpenAPI document as the running API publishes it."""
    return schemathesis.openapi.from_url(f"{api_server[0]}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_every_operation_answers_as_its_schema_says(case, api_server):
    url, key = api_server
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {key}"})
