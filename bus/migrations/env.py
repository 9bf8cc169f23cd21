"""Alembic environment: runs on the connection that ``bus.migrate.upgrade`` hands it."""

from alembic import context

import coordinator.schema  # noqa: F401  (registers the coordinator's tables on the shared metadata)
from bus.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # plain `alembic` CLI use: build an engine from the URL in the config
    from bus.db import make_engine
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
