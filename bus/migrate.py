"""Bring a ledger's schema to the newest migration (Alembic, run programmatically)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from bus.db import is_sqlite

_SCRIPTS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at cogo's migration scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to ``revision``; a no-op when already there."""
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn.exec_driver_sql("COMMIT") if conn.in_transaction() else None
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
