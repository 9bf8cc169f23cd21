"""The migration history builds exactly the tables the code declares: a column added to a ``Table`` without its
migration (or a migration that drifts from the code) fails here, on both ledgers."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import coordinator.schema  # noqa: F401  (its tables share the ledger's MetaData)
from bus.schema import metadata


def test_the_migrations_build_exactly_the_declared_schema(engine):
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_the_open_fan_in_count_is_filled_in_for_runs_that_were_under_way(tmp_path):
    from sqlalchemy import text

    from bus.db import make_engine
    from bus.migrate import upgrade

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
