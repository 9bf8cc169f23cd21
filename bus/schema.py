"""The ledger's tables: ``agent_messages`` (the bus), ``bus_events`` (its audit), ``introspection_events``.

Times are seconds since the epoch (UTC) as doubles: the same type and the same comparisons on SQLite
and PostgreSQL, and no time-zone conversion on the hot path.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

ID = String(36)
HELD_FINAL = "{t}held_tokens IS NOT NULL AND {t}status IN ('done', 'failed', 'dead')"
"""An assignment that held budget and ended (or was abandoned) but is not settled yet (``{t}``: a table
prefix, so a query can name the partial index's predicate exactly)."""
WAITING = "kind = 'assignment' AND status = 'queued' AND waiting_for IS NOT NULL"
BIGID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY

agent_messages = Table(
    "agent_messages", metadata,
    Column("id", ID, primary_key=True),
    Column("service", String(64), nullable=False),
    Column("role", String(64), nullable=False),
    Column("shard", Integer, nullable=False, default=0),
    Column("tenant", String(128), nullable=False),
    Column("run_id", ID, nullable=True),
    Column("kind", String(32), nullable=False),
    Column("causation_id", ID, nullable=True),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=1),
    Column("retry_at", Double, nullable=True),
    Column("lease_until", Double, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", Double, nullable=True),
    Column("result_snippet", Text, nullable=True),
    Column("result_url", Text, nullable=True),
    Column("usage_tokens", Integer, nullable=False, default=0),
    Column("usage_cost_usd", Double, nullable=False, default=0.0),
    # What an admitted assignment holds against the budgets above it until it is settled (its own budget);
    # NULL when it holds nothing (not admitted, or no budget above it).
    Column("held_tokens", Integer, nullable=True),
    Column("held_cost_usd", Double, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("published_at", Double, nullable=True),
    Column("settled_at", Double, nullable=True),
    # A brain event's place in its run's history: the run version its application produced (replay order).
    Column("run_version", Integer, nullable=True),
    # An assignment held as a dead letter (``held``, status ``dead``: its run waits for an operator), and what the
    # operator did with it (``requeued``, ``discarded``); NULL for every other row (``coordinator/dead_letters.py``).
    Column("dead_letter", String(16), nullable=True),
    # What an admitted assignment holds against its tenant's period budgets until it is settled:
    # ``{"periods": [...], "usd": held, "usd_per_token": price or null}`` (``coordinator/admission/period.py``).
    Column("period_held", JSON, nullable=True),
    # What a deferred assignment waits for (the admission policy's code) and since when; NULL once admitted.
    Column("waiting_for", String(64), nullable=True),
    Column("waiting_since", Double, nullable=True),
    # When the dispatcher last admitted the assignment (``queued | retry_wait → dispatched``): the start of the
    # attempt's queue wait, which the worker's audit row reports (``wait_s``); NULL until admitted.
    Column("dispatched_at", Double, nullable=True),
    Index(None, "status", "updated_at"),
    Index(None, "run_id"),
    Index(None, "causation_id"),
    # Admission's read of the holds that ended but are not settled yet: few, whatever the table's size.
    Index("ix_agent_messages_held_final", "run_id",
          sqlite_where=text(HELD_FINAL.format(t="")), postgresql_where=text(HELD_FINAL.format(t=""))),
    # The reclaimer's scan: only rows that are not finished, so it stays small as the table grows.
    Index("ix_agent_messages_open", "status", "updated_at",
          sqlite_where=text("status NOT IN ('settled', 'done', 'failed', 'dead')"),
          postgresql_where=text("status NOT IN ('settled', 'done', 'failed', 'dead')")),
    # The assignments a policy deferred (``coordinator/admission/``): only those rows, whatever the table's size.
    # (The slots a limit counts are read through ``ix_agent_messages_open``: the in-flight rows, which the limits
    # keep few; an index of its own would cost every step an index write for the few fleets that set limits.)
    Index("ix_agent_messages_waiting", "service", "role", "tenant",
          sqlite_where=text(WAITING), postgresql_where=text(WAITING)),
)

bus_events = Table(
    "bus_events", metadata,
    Column("id", BIGID, primary_key=True, autoincrement=True),
    Column("message_id", ID, nullable=False),
    Column("run_id", ID, nullable=True),
    Column("tenant", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("detail", JSON, nullable=True),
    Column("created_at", Double, nullable=False),
    Index(None, "message_id"),
    Index(None, "run_id"),
    Index(None, "kind", "created_at"),
    Index(None, "tenant", "kind", "created_at"),  # a tenant's recent rows of a kind (the metric cards)
    # Readers that follow the ids (the circuit sweep, the metrics fold: ``bus/cursor.py``) need ids never reused:
    # without AUTOINCREMENT SQLite would hand out again the ids of the newest rows once retention deleted them.
    sqlite_autoincrement=True,
)

introspection_events = Table(
    "introspection_events", metadata,
    Column("id", BIGID, primary_key=True, autoincrement=True),
    Column("run_id", ID, nullable=False),
    Column("parent_run_id", ID, nullable=True),
    Column("category", String(16), nullable=False),
    Column("type", String(96), nullable=False),
    Column("token_id", String(160), nullable=True),
    Column("node_id", String(128), nullable=True),
    Column("data", JSON, nullable=True),
    Column("created_at", Double, nullable=False),
    Index(None, "run_id", "id"),
    Index(None, "type"),
)

circuits = Table(
    # One circuit breaker per (service, role, model): closed, open or half_open (``bus/circuits.py``).
    "circuits", metadata,
    Column("service", String(64), primary_key=True),
    Column("role", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("window_started_at", Double, nullable=True),
    Column("window_total", Integer, nullable=False, default=0),
    Column("window_failures", Integer, nullable=False, default=0),
    Column("opened_at", Double, nullable=True),
    Column("retry_at", Double, nullable=True),
    Column("open_count", Integer, nullable=False, default=0),
    Column("probe_id", ID, nullable=True),
    Column("reason", Text, nullable=True),
    Column("updated_at", Double, nullable=False),
)

def cursor_table(name: str, *extra: Column) -> Table:
    """The one row of what a reader of ``bus_events`` has read (``bus/cursor.py``): every id up to ``low_id``, the
    ids above it in ``seen`` (ids may commit out of order on PostgreSQL, so the reader reads again above low_id),
    and when it read up to which id (``marks``, by its own clock)."""
    return Table(name, metadata,
                 Column("id", Integer, primary_key=True, autoincrement=False),
                 Column("low_id", BIGID, nullable=False),
                 Column("seen", JSON, nullable=False),
                 Column("marks", JSON, nullable=True),
                 *extra,
                 Column("updated_at", Double, nullable=False))


circuit_cursor = cursor_table("circuit_cursor")
"""The circuit sweep's cursor (``bus/circuits.py``)."""

metric_totals = Table(
    # The fleet's Prometheus counters and histogram buckets, folded from ``bus_events`` exactly once
    # (``coordinator/metrics/fold.py``): one row per family sample, ``labels`` its canonical label text
    # (sorted ``k="v"`` pairs). Never pruned: a counter never goes down.
    "metric_totals", metadata,
    Column("name", String(128), primary_key=True),
    Column("labels", String(1024), primary_key=True),
    Column("value", Double, nullable=False),
)

metric_cursor = cursor_table("metric_cursor", Column("retention_waiting_since", Double, nullable=True))
"""The metrics fold's cursor (``coordinator/metrics/fold.py``), and since when retention has waited for the fold to
read the audit rows of the runs it would prune (NULL: it does not wait)."""

agents = Table(
    "agents", metadata,
    # ``<process>@<hostname>:<pid>``: one row per worker process that ever registered (``bus/agents.py``).
    Column("agent_id", String(255), primary_key=True),
    Column("process", String(128), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("routes", JSON, nullable=False),  # ["service.role", …]
    Column("version", String(64), nullable=False),  # the assignment contract version it serves
    Column("software", String(64), nullable=False),  # cogo's package version
    Column("models", JSON, nullable=False),  # the models it serves; [] = any
    Column("capacity", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # idle | busy | stopped (gone is derived when read)
    Column("running", Integer, nullable=False),
    Column("assignments_done", Integer, nullable=False),
    Column("heartbeat_s", Double, nullable=False),  # its own interval: gone after three missed
    Column("started_at", Double, nullable=False),
    Column("heartbeat_at", Double, nullable=False),
    Column("stopped_at", Double, nullable=True),
    Index(None, "heartbeat_at"),
)
