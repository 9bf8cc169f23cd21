"""Ingress: an intent becomes a run row and its start event, in one transaction.

An intent names a workflow (``INTENT_WORKFLOWS``, or any registered workflow name). ``admit`` is what
ingress does before anything is written: find the workflow, and refuse a payload that breaks its input
schema (``payload.invalid``, with the path) — so a bad payload never reaches a worker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert

from bus import ledger
from bus.envelope import Budget, Intent
from bus.errors import InvalidRequest, NotFound
from bus.outbox import Delivery, delivery_for
from bus.routing import shard_for
from bus.tracing import TRACE_KEY
from coordinator.definitions import Registry, WorkflowDefinition
from coordinator.inputs import check_payload
from coordinator.schema import runs

INTENT_WORKFLOWS = {
    "codegen": "codegen-build-test",
    "index": "indexing",
    "upgrade": "upgrade",
    "demo": "demo",
    "embed": "single-task",
    "echo": "echo",
}
"""The built-in intents and the workflow each runs; any registered workflow name is an intent too.

``echo`` is a real echo (its run completes with the payload as its output). Before, ``echo`` ran one
rag-embed task: that intent is ``embed`` now."""


@dataclass(frozen=True)
class IntentInfo:
    """What ``GET /api/intents`` says about one intent."""

    name: str
    workflow: str
    version: int
    description: str
    input_schema: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The listing's entry."""
        return {"name": self.name, "workflow": self.workflow, "version": self.version,
                "description": self.description, "input_schema": self.input_schema}


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


def admit(intent: Intent, registry: Registry) -> WorkflowDefinition:
    """The workflow an intent runs, once its payload has been checked against the workflow's input schema.

    Raises:
        NotFound: code ``intent.unknown``.
        InvalidRequest: code ``payload.invalid``; the message names the path (``documents[0].text: field
            required``).
    """
    definition = resolve(intent.intent, registry)
    check_payload(intent.payload, definition.input_schema, intent=intent.intent)
    return definition


def catalogue(registry: Registry) -> list[IntentInfo]:
    """Every intent: the built-in names first, then every registered workflow not already listed under one.

    A workflow is described by its newest version.
    """
    names = [n for n in INTENT_WORKFLOWS if INTENT_WORKFLOWS[n] in registry.names()]
    names += [n for n in registry.names() if n not in INTENT_WORKFLOWS]
    found = []
    for name in names:
        definition = resolve(name, registry)
        found.append(IntentInfo(name=name, workflow=definition.name, version=definition.version,
                                description=definition.description, input_schema=definition.input_schema))
    return found


def create_run(conn: Connection, intent: Intent, definition: WorkflowDefinition, *, now: float, shards: int,
               run_id: str | None = None, parent: dict[str, Any] | None = None,
               traceparent: str | None = None) -> tuple[str, Delivery]:
    """Insert the run (pending) and its start event; returns the run id and the start's delivery. The start event
    carries ``traceparent`` (the API's root span, or the parent's step: ``bus/tracing.py``) when tracing is on."""
    run_id = run_id or str(uuid.uuid4())
    parent = parent or {}
    root = parent.get("root_run_id", run_id)  # a run tree lives in one shard: its root's
    chosen = intent.budget or definition.budget
    budget = chosen.model_dump(by_alias=True) if chosen is not None else None
    conn.execute(insert(runs).values(
        id=run_id, tenant=intent.tenant, intent=intent.intent, workflow=definition.name,
        workflow_version=definition.version, status="pending", parent_run_id=parent.get("run_id"),
        parent_token_id=parent.get("token_id"), root_run_id=root,
        depth=parent.get("depth", 0), input=intent.payload, context={}, budget=budget, visits={},
        token_seq=0, version=0, spent_tokens=0, spent_cost_usd=0.0, created_at=now, updated_at=now))
    start = ledger.brain_event(run_id=run_id, tenant=intent.tenant, kind="start",
                               payload={} if traceparent is None else {TRACE_KEY: traceparent},
                               shard=shard_for(root, shards))
    ledger.insert_messages(conn, [start], now=now)
    return run_id, delivery_for(start, now=now)


def bounded(intent: Intent, definition: WorkflowDefinition, *, max_cost_usd: float, max_tokens: int) -> Intent:
    """``intent`` with a run budget under the operator's ceilings (``COGO_MAX_RUN_COST_USD``, ``…_TOKENS``).

    A run with no budget of its own (none in the intent, none in its definition) gets the ceilings as its
    budget: no run is unbounded.

    Raises:
        InvalidRequest: code ``budget.over_ceiling``, naming the field and the ceiling.
    """
    budget = intent.budget or definition.budget
    if budget is None:
        return intent.model_copy(update={"budget": Budget(max_cost_usd=max_cost_usd, max_tokens=max_tokens)})
    for field, value, ceiling in (("maxCostUsd", budget.max_cost_usd, max_cost_usd),
                                  ("maxTokens", budget.max_tokens, max_tokens)):
        if value > ceiling:
            raise InvalidRequest(f"budget.{field} is {value:g}; this deployment allows at most {ceiling:g}",
                                 code="budget.over_ceiling", details={"field": f"budget.{field}", "max": ceiling})
    return intent
