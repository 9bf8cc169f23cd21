"""The HTTP API in-process over a test fleet's ledger, called with real keys."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from coordinator.api.deps import Services
from coordinator.api.server import create_app
from coordinator.keys import create_key


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
