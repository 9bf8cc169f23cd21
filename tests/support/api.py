"""The HTTP API over a test fleet's ledger, called with real keys: in-process (``http``) or served by uvicorn on a
free port in a thread (``serving``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from coordinator.api.deps import Services
from coordinator.api.server import create_app
from coordinator.keys import create_key
from tests.support.waiting import wait_until

ASK = """
name: ask
start: gate
nodes:
  gate: {kind: approval, prompt: "ship?", approve: done, reject: done}
  done: {kind: end}
"""
"""A workflow that waits for a person at once (an approval), then ends: a run the API can decide."""


def make_key(engine: Engine, tenant: str, scopes: Iterable[str] = ("admin",)) -> str:
    """A new key of ``tenant`` with ``scopes``; returns the key itself."""
    with engine.begin() as conn:
        return create_key(conn, tenant=tenant, scopes=scopes, name=f"test {tenant}").secret_key


def app_of(fleet) -> object:
    """The API app over ``fleet``'s ledger, publisher, registry and settings."""
    return create_app(Services(engine=fleet.engine, publisher=fleet.publisher, registry=fleet.registry,
                               settings=fleet.settings))


def http(app, key: str | None = None) -> TestClient:
    """A TestClient for ``app`` that sends ``key`` as a Bearer token (none: unauthenticated)."""
    return TestClient(app, headers={"Authorization": f"Bearer {key}"} if key else {})


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app, *, on_startup: Callable | None = None, graceful_s: float = 2) -> Iterator[str]:
    """``app`` served over real HTTP by uvicorn in a thread on a free port; yields its base URL, then stops it.

    Args:
        on_startup: an async function run on the server's event loop before it serves (e.g. to size its threads).
        graceful_s: how long the server waits for open connections (a live stream) once told to stop.
    """
    if on_startup is not None:
        app.router.on_startup.append(on_startup)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                                           timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=20, message="the API to start")
        assert server.started, "the API did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
