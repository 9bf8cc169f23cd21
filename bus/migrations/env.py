"""Alembic environment: runs on the connection that ``bus.migrate.upgrade`` hands it.

The migrations are explicit scripts; the metadata matters only to ``alembic revision --autogenerate``, which
must be handed the whole schema (``cfg.attributes["target_metadata"] = metadata`` after importing
``coordinator.schema``, which registers its tables on it): the bus does not import the layers above it.
"""

from alembic import context

from bus.schema import metadata as bus_metadata

metadata = context.config.attributes.get("target_metadata", bus_metadata)

connection = context.config.attributes.get("connection")
if connection is None:  # plain `alembic` CLI use: build an engine from the URL in the config
    from bus.db import make_engine
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
