"""Engines for the ledger: SQLite (WAL, busy timeout, immediate write transactions) or PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bus.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://"):]
    return url


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url``, tuned for many short write transactions from many processes.

    Raises:
        ConfigError: the URL cannot be parsed or names an unsupported database.
    """
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError; say which setting is wrong
        raise ConfigError(f"COGO_DATABASE_URL is not a database URL: {url!r}") from exc
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database or "")
    if parsed.get_backend_name() == "postgresql":
        return _postgres_engine(url, pool_size)
    raise ConfigError(f"COGO_DATABASE_URL must name sqlite or postgresql, got {parsed.get_backend_name()!r}")


IDLE_IN_TRANSACTION_MS = 10_000
"""How long PostgreSQL keeps a session of ours that stopped in the middle of a transaction before ending it."""


def _postgres_engine(url: str, pool_size: int) -> Engine:
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                           json_serializer=dumps)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Our transactions last milliseconds. One whose COMMIT never comes (its host was cut off from the network)
        # would hold its row locks until TCP gives up, hours later, and every reclaimer sweep would wait on them:
        # the server ends such a session instead, releasing its locks (tests/e2e/test_across_hosts.py).
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
        dbapi_conn.commit()

    return engine


def _sqlite_engine(url: str, path: str) -> Engine:
    if path and path != ":memory:":
        from pathlib import Path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=NullPool if path in ("", ":memory:") else None,
                           connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                           json_serializer=dumps)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin, so that we can BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Take the write lock at BEGIN: two writers never deadlock upgrading a read lock, they queue.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def dumps(value) -> str:
    """JSON as the ledger's columns store it (``allow_nan=False``: NaN and Infinity are not JSON; a write carrying
    one fails instead of storing it)."""
    import json
    return json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)


def is_sqlite(engine: Engine) -> bool:
    """Whether ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"
