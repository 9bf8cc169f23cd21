"""The orchestrator endpoints of the user's plan (seed 003): plan without running, execute, and state."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy import Connection

from bus import circuits
from bus.envelope import Intent
from bus.errors import Forbidden
from coordinator import events as ev
from coordinator import intents
from coordinator.api.auth import owned_run, scoped
from coordinator.api.deps import Services, services
from coordinator.api.runs import Accepted, IdempotencyKey, accept
from coordinator.explain import explain
from coordinator.keys import Principal
from coordinator.planning import plan
from coordinator.replay import as_json, initial_state
from coordinator.store import run_view, token_rows
from coordinator.timefmt import with_iso

router = APIRouter()


@router.post("/api/orchestrator/plan")
def plan_intent(body: Intent, s: Services = Depends(services),
                who: Principal = Depends(scoped("intents:write"))) -> dict[str, Any]:
    """What starting this intent would decide — the pure planner on an empty run; nothing is written or sent.

    A payload that does not match the intent's input schema is refused (422 ``payload.invalid``).
    """
    if not who.sees(body.tenant):
        raise Forbidden(f"this key acts for tenant {who.tenant!r}, not {body.tenant!r}", code="auth.tenant")
    definition = intents.admit(body, s.registry)
    run_id = str(uuid.uuid4())
    row = {"id": run_id, "tenant": body.tenant, "intent": body.intent, "workflow": definition.name,
           "workflow_version": definition.version, "input": body.payload, "parent_run_id": None,
           "parent_token_id": None, "root_run_id": run_id, "depth": 0,
           "budget": body.budget.model_dump(by_alias=True) if body.budget else None}
    state = initial_state(row, definition, s.registry.catalog(definition))
    result = plan(state, ev.Start(id="dry-run", run_id=run_id), now=time.time())
    return {"workflow": definition.name, "version": definition.version,
            "decisions": [as_json(d.describe()) for d in result.decisions],
            "events": [{"type": e.type, "node_id": e.node_id, "token_id": e.token_id, "data": as_json(dict(e.data))}
                       for e in result.events]}


@router.post("/api/orchestrator/execute", status_code=202, response_model=Accepted)
def execute_intent(body: Intent, s: Services = Depends(services), who: Principal = Depends(scoped("intents:write")),
                   idempotency_key: str | None = IdempotencyKey) -> dict[str, str]:
    """Start the intent: the same as ``POST /api/intents``."""
    return accept(body, s, who, idempotency_key)


@router.get("/api/orchestrator/state")
def state(run_id: str | None = None, s: Services = Depends(services),
          who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """A run's state in one answer: the run, its tokens, and what it waits for and why. Without ``run_id``
    (admin only): the fleet's orchestrator state, every circuit breaker of (service, role, model) with it."""
    if run_id is None:
        who.require("admin")
        with s.engine.connect() as conn:
            return fleet_state(conn, now=time.time())
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        return {"run": run_view(conn, run_id), "tokens": token_rows(conn, run_id), "explain": explain(conn, run_id)}


def fleet_state(conn: Connection, *, now: float) -> dict[str, Any]:
    """The fleet's orchestrator state: every circuit (``bus/circuits.py``) and how many are in each state."""
    found = [c.values() for c in circuits.read_all(conn)]
    counts = {state: sum(1 for c in found if c["state"] == state) for state in circuits.STATES}
    return with_iso({"checked_at": now, "circuits": found, "circuit_counts": counts})
