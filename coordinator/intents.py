"""Ingress: an intent becomes a run row and its start event, in one transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, insert

from bus import ledger
from bus.envelope import Intent
from bus.errors import NotFound
from bus.outbox import Delivery, delivery_for
from bus.routing import DECIDE, ORCHESTRATOR, Route, shard_for
from coordinator.definitions import Registry, WorkflowDefinition
from coordinator.schema import runs

INTENT_WORKFLOWS = {
    "codegen": "codegen-build-test",
    "index": "indexing",
    "upgrade": "upgrade",
    "echo": "single-task",
    "demo": "demo",
}
"""Intent names of the user's three flows; any registered workflow name is an intent too."""


def resolve(intent: str, registry: Registry) -> WorkflowDefinition:
    """The workflow an intent runs.

    Raises:
        NotFound: code ``intent.unknown``; the message lists the known intents.
    """
    name = INTENT_WORKFLOWS.get(intent, intent)
    try:
        return registry.get(name)
    except NotFound:
        known = sorted(set(INTENT_WORKFLOWS) | set(registry.names()))
        raise NotFound(f"unknown intent {intent!r}; known: {', '.join(known)}", code="intent.unknown") from None


def create_run(conn: Connection, intent: Intent, definition: WorkflowDefinition, *, now: float, shards: int,
               run_id: str | None = None, parent: dict[str, Any] | None = None) -> tuple[str, Delivery]:
    """Insert the run (pending) and its start event; returns the run id and the start's delivery."""
    run_id = run_id or str(uuid.uuid4())
    parent = parent or {}
    chosen = intent.budget or definition.budget
    budget = chosen.model_dump(by_alias=True) if chosen is not None else None
    conn.execute(insert(runs).values(
        id=run_id, tenant=intent.tenant, intent=intent.intent, workflow=definition.name,
        workflow_version=definition.version, status="pending", parent_run_id=parent.get("run_id"),
        parent_token_id=parent.get("token_id"), root_run_id=parent.get("root_run_id", run_id),
        depth=parent.get("depth", 0), input=intent.payload, context={}, budget=budget, visits={},
        token_seq=0, version=0, spent_tokens=0, spent_cost_usd=0.0, created_at=now, updated_at=now))
    start = ledger.NewMessage(route=Route(ORCHESTRATOR, DECIDE, shard_for(run_id, shards), intent.tenant),
                              kind="start", payload={}, run_id=run_id)
    ledger.insert_messages(conn, [start], now=now)
    return run_id, delivery_for(start, shards=shards, now=now)
