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
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from bus.db import make_engine
from bus.migrate import upgrade
from coordinator.api.deps import Services
from coordinator.api.server import create_app
from tests.integration.test_openapi import ASK
from tests.support.api import make_key
from tests.support.harness import Fleet, registry_of


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


EXCLUDED = [checks.negative_data_rejection]
"""Query strings carry only text: a "negative" object or null for ``?status=`` reaches the API as the text
``status=...``, which is a valid string, so its acceptance is no defect. Every answer is still checked
against the schema (status, content type, body, headers) and for 5xx."""


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_its_schema_says(api_server, mode):
    url, key = api_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 20

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=40 * len(operations), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {key}"}, excluded_checks=EXCLUDED)

    check()
