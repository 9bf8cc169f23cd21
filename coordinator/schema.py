"""The coordinator's tables: runs, tokens, branch scopes, fan-ins and their arrivals, approvals, workflow definitions.

They share the ledger's MetaData so that one migration history covers the whole database.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Double, Index, Integer, String, Table, Text

from bus.schema import ID, metadata

runs = Table(
    "runs", metadata,
    Column("id", ID, primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("intent", String(128), nullable=False),
    Column("workflow", String(128), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("parent_run_id", ID, nullable=True),
    Column("parent_token_id", String(160), nullable=True),
    Column("root_run_id", ID, nullable=False),
    Column("depth", Integer, nullable=False, default=0),
    Column("input", JSON, nullable=False),
    Column("context", JSON, nullable=False),
    Column("output", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("budget", JSON, nullable=True),
    Column("spent_tokens", Integer, nullable=False, default=0),
    Column("spent_cost_usd", Double, nullable=False, default=0.0),
    # A budgeted run's counters over its whole subtree (coordinator.budgets): settled spend, and what the
    # admitted, unsettled assignments under it hold (their budgets) and how many they are.
    Column("tree_spent_tokens", Integer, nullable=False, default=0),
    Column("tree_spent_cost_usd", Double, nullable=False, default=0.0),
    Column("tree_held_tokens", Integer, nullable=False, default=0),
    Column("tree_held_cost_usd", Double, nullable=False, default=0.0),
    Column("tree_in_flight", Integer, nullable=False, default=0),
    Column("visits", JSON, nullable=False),
    Column("open_fans", Integer, nullable=False, default=0),
    # How many of its tokens are active, and how many of those wait: a partial state's run status needs them
    # for the tokens it leaves out (kept by phase 1 with every token it writes; never counted per event).
    Column("active_tokens", Integer, nullable=False, default=0),
    Column("waiting_tokens", Integer, nullable=False, default=0),  # unfired fan-ins: none, and an event skips them
    Column("token_seq", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=0),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("ended_at", Double, nullable=True),
    Index(None, "status", "updated_at"),
    Index(None, "parent_run_id"),
    Index(None, "root_run_id"),
    Index(None, "tenant", "created_at"),
)

tokens = Table(
    "tokens", metadata,
    Column("run_id", ID, primary_key=True),
    Column("id", String(160), primary_key=True),
    Column("node_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("scope", String(64), nullable=True),
    Column("fan_id", String(64), nullable=True),
    Column("branch_index", Integer, nullable=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("iteration", Integer, nullable=False, default=0),
    Column("assignment_id", ID, nullable=True),
    Column("child_run_id", ID, nullable=True),
    Column("wait", JSON, nullable=True),
    Column("output", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Index(None, "run_id", "status"),
)

run_visits = Table(
    # A branch's loop counters (how many times a node was entered in one branch scope): a row each, so an
    # event reads and writes its own branch's, not every branch's (the run row keeps the root scope's).
    "run_visits", metadata,
    Column("run_id", ID, primary_key=True),
    Column("scope", String(64), primary_key=True),
    Column("node_id", String(128), primary_key=True),
    Column("count", Integer, nullable=False),
)

branch_scopes = Table(
    "branch_scopes", metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("fan_id", String(64), nullable=False),
    Column("branch_index", Integer, nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    Index(None, "run_id", "fan_id"),
)

fan_ins = Table(
    "fan_ins", metadata,
    Column("run_id", ID, primary_key=True),
    Column("fan_id", String(64), primary_key=True),
    Column("join_node", String(128), nullable=False),
    Column("expected", Integer, nullable=False),
    Column("arrived_count", Integer, nullable=False, default=0),  # how many rows of fan_arrivals it has
    Column("fired", Boolean, nullable=False, default=False),
    Column("owner_token_id", String(200)),  # the token that waits for the join: loaded with an arrival

    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

fan_arrivals = Table(
    # A row per branch that reached its join: an arrival inserts its own row and reads only its own (whether its
    # branch already arrived), and the fan-in keeps the count, so an arrival at a 10,000-way join reads and writes
    # what one at a 10-way join does. Only the arrival that fires the join reads them all.
    "fan_arrivals", metadata,
    Column("run_id", ID, primary_key=True),
    Column("fan_id", String(64), primary_key=True),
    Column("branch_index", Integer, primary_key=True),
    Column("token_id", String(160), nullable=False),
    Column("created_at", Double, nullable=False),
)

approvals = Table(
    "approvals", metadata,
    Column("id", ID, primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("token_id", String(160), nullable=False),
    Column("node_id", String(128), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("prompt", Text, nullable=True),
    Column("requested_at", Double, nullable=False),
    Column("expires_at", Double, nullable=True),
    Column("decided_at", Double, nullable=True),
    Column("decided_by", String(128), nullable=True),
    Column("comment", Text, nullable=True),
    Index(None, "status", "tenant"),
    Index(None, "run_id"),
)

workflow_definitions = Table(
    "workflow_definitions", metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("body", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
)
"""API keys: only a SHA-256 of each secret is kept; the key itself is shown once, at creation."""

rate_buckets = Table(
    "rate_buckets", metadata,
    Column("tenant", String(128), primary_key=True),
    Column("tokens", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)
"""One token bucket per tenant for ingress, shared by every API process."""

tenant_spend = Table(
    "tenant_spend", metadata,
    Column("tenant", String(128), primary_key=True),
    Column("period", String(16), primary_key=True),
    Column("spent_usd", Double, nullable=False, default=0.0),
    Column("held_usd", Double, nullable=False, default=0.0),
    Column("updated_at", Double, nullable=False),
)
"""A tenant's spend in one period (``day:2026-12-03``, ``month:2026-12``), priced from metered tokens, and what
its admitted, unsettled assignments hold against it (``coordinator/admission/period.py``)."""

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("tenant", String(128), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("request_sha256", String(64), nullable=False),
    Column("created_at", Double, nullable=False),
    Index(None, "run_id"),
)
"""``Idempotency-Key`` of an accepted intent: the same key from the same tenant answers the same run."""
