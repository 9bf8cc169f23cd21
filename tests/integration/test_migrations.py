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
