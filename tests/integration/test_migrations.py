"""The migration history builds exactly the tables the code declares: a column added to a ``Table`` without its
migration (or a migration that drifts from the code) fails here, on both ledgers."""

from __future__ import annotations

import json

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

import coordinator.schema  # noqa: F401  (its tables share the ledger's MetaData)
from bus.db import make_engine
from bus.migrate import alembic_config, upgrade
from bus.schema import bus_events, metadata
from coordinator.metrics.fold import fold
from tests.integration.test_metrics_fold import NOW, audit_row, counted, cursor
from tests.support.services import POSTGRES_URL, require, unique


def test_the_migrations_build_exactly_the_declared_schema(engine):
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_the_open_fan_in_count_is_filled_in_for_runs_that_were_under_way(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine, "0004")
    with engine.begin() as conn:
        for run_id in ("busy", "idle"):
            conn.execute(text("INSERT INTO runs (id, tenant, intent, workflow, workflow_version, status, root_run_id, "
                              "depth, input, context, spent_tokens, spent_cost_usd, visits, token_seq, version, "
                              "created_at, updated_at) VALUES (:id, 't', 'i', 'w', 1, 'running', :id, 0, '{}', '{}', "
                              "0, 0, '{}', 0, 0, 0, 0)"), {"id": run_id})
        for fan_id, fired in (("open", False), ("done", True)):
            conn.execute(text("INSERT INTO fan_ins (run_id, fan_id, join_node, expected, arrived, fired, created_at, "
                              "updated_at) VALUES ('busy', :fan, 'j', 2, '[]', :fired, 0, 0)"),
                         {"fan": fan_id, "fired": fired})
    upgrade(engine)
    with engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT id, open_fans FROM runs")).all())
    engine.dispose()
    assert counts == {"busy": 1, "idle": 0}


@pytest.fixture(params=["sqlite", "postgres"])
def blank(request, tmp_path):
    """An engine on an empty, unmigrated ledger (SQLite, and a fresh PostgreSQL schema dropped after)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
        yield engine
        engine.dispose()
        return
    require("PostgreSQL", "127.0.0.1", 5432)
    schema, admin = unique("t_"), make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_arrivals_written_as_a_list_become_rows_and_a_count_and_go_back(blank):
    upgrade(blank, "0004")
    with blank.begin() as conn:
        conn.execute(text("INSERT INTO runs (id, tenant, intent, workflow, workflow_version, status, root_run_id, "
                          "depth, input, context, spent_tokens, spent_cost_usd, visits, token_seq, version, "
                          "created_at, updated_at) VALUES ('r', 't', 'i', 'w', 1, 'running', 'r', 0, '{}', '{}', "
                          "0, 0, '{}', 0, 0, 0, 0)"))
        for token_id, index, at in (("merge.7", 2, 5.0), ("merge.9", 0, 7.0)):  # branch 2 arrived first
            conn.execute(text("INSERT INTO tokens (run_id, id, node_id, status, fan_id, branch_index, attempt, "
                              "iteration, created_at, updated_at) VALUES ('r', :id, 'merge', 'completed', 'split.1', "
                              ":i, 0, 0, :at, :at)"), {"id": token_id, "i": index, "at": at})
        for fan_id, arrived in (("split.1", "[2, 0]"), ("other.2", "[]")):
            conn.execute(text("INSERT INTO fan_ins (run_id, fan_id, join_node, expected, arrived, fired, created_at, "
                              "updated_at) VALUES ('r', :fan, 'merge', 4, :arrived, :fired, 0, 9)"),
                         {"fan": fan_id, "arrived": arrived, "fired": False})
    upgrade(blank)
    with blank.connect() as conn:
        rows = conn.execute(text("SELECT fan_id, branch_index, token_id, created_at FROM fan_arrivals "
                                 "ORDER BY branch_index")).all()
        counts = dict(conn.execute(text("SELECT fan_id, arrived_count FROM fan_ins")).all())
    assert [tuple(r) for r in rows] == [("split.1", 0, "merge.9", 7.0), ("split.1", 2, "merge.7", 5.0)]
    assert counts == {"split.1": 2, "other.2": 0}
    cfg = alembic_config(blank)
    with blank.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
        conn.commit()
        lists = {fan: json.loads(a) if isinstance(a, str) else a
                 for fan, a in conn.execute(text("SELECT fan_id, arrived FROM fan_ins")).all()}
    assert lists == {"split.1": [2, 0], "other.2": []}  # in arrival order, as the list was kept


def test_the_migration_brings_the_counters_a_cursor_that_folds_what_was_there_and_ids_never_reused(blank):
    upgrade(blank, "0013")
    with blank.begin() as conn:
        audit_row(conn, "execute_done")
        audit_row(conn, "execute_done")
    upgrade(blank)
    assert cursor(blank) == (0, [])
    with blank.begin() as conn:
        conn.execute(text("INSERT INTO agent_messages (id, service, role, shard, tenant, kind, payload, status, "
                          "attempts, max_attempts, usage_tokens, usage_cost_usd, created_at, updated_at, "
                          "dispatched_at) VALUES ('a', 's', 'r', 0, 't', 'assignment', '{}', 'dispatched', 0, 1, 0, "
                          "0, 1, 1, 2.5)"))
        newest = conn.execute(select(bus_events.c.id).order_by(bus_events.c.id.desc())).scalars().first()
        conn.execute(bus_events.delete().where(bus_events.c.id == newest))  # retention took the newest row
        audit_row(conn, "probe")
        assert conn.execute(select(bus_events.c.id).where(bus_events.c.kind == "probe")).scalar_one() > newest
    fold(blank, clock=lambda: NOW)
    assert counted(blank, "execute_done") == 1 and counted(blank, "probe") == 1  # what the ledger held, once
    cfg = alembic_config(blank)
    with blank.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0013")
        conn.commit()
        tables = set(conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'table'" if blank.dialect.name == "sqlite" else
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")).scalars())
    assert "metric_totals" not in tables and "metric_cursor" not in tables and "bus_events" in tables
    upgrade(blank)
    assert cursor(blank) == (0, [])
