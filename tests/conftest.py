"""Shared fixtures: a migrated ledger on SQLite and on PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bus.db import make_engine
from bus.migrate import upgrade
from tests.support.services import POSTGRES_URL, require, unique

# ``owned_redis`` and ``owned_postgres``: servers a test starts itself, so that it may flush, restart or cut them.
pytest_plugins = ["tests.support.owned"]


def _postgres_engine():
    require("PostgreSQL", "127.0.0.1", 5432)
    schema = unique("t_")
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    return make_engine(url), url, admin, schema


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    """A migrated, empty ledger's URL, once per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    engine, url, admin, schema = _postgres_engine()
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def engine(ledger_url):
    """An engine on a migrated, empty ledger (SQLite and PostgreSQL)."""
    eng = make_engine(ledger_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path):
    """An engine on a migrated SQLite ledger only (for tests that need no backend matrix)."""
    eng = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def engine_url_for(tmp_path):
    """``engine_url_for("sqlite"|"postgres")``: a migrated ledger URL; PostgreSQL schemas are dropped after."""
    cleanups = []

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'e2e-ledger.db'}"
        engine, url, admin, schema = _postgres_engine()
        engine.dispose()
        cleanups.append((admin, schema))
        return url

    yield make
    for admin, schema in cleanups:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
