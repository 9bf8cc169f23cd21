"""Ingress and runs: ``POST /api/intents`` and what a person reads about a run."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Table, select
from sqlalchemy.exc import IntegrityError

from bus import introspection, tracing
from bus.envelope import Intent
from bus.errors import CogoError, Forbidden
from bus.schema import agent_messages, bus_events
from coordinator import idempotency, intents, ratelimit
from coordinator.api.auth import owned_run, scoped, tenant_filter
from coordinator.api.deps import Services, services
from coordinator.idempotency import KEY_PATTERN
from coordinator.keys import Principal
from coordinator.schema import runs
from coordinator.store import run_view, token_rows
from coordinator.timefmt import with_iso

router = APIRouter()


class Accepted(BaseModel):
    """The run an accepted intent started."""

    id: str


IdempotencyKey = Header(None, alias="Idempotency-Key", min_length=1, max_length=200, pattern=KEY_PATTERN,
                        description="Retrying with the same key returns the run the first request started "
                                    "(per tenant, durable); the same key with a different body is a 409.")


@router.post("/api/intents", status_code=202, response_model=Accepted)
def post_intent(body: Intent, s: Services = Depends(services), who: Principal = Depends(scoped("intents:write")),
                idempotency_key: str | None = IdempotencyKey) -> dict[str, str]:
    """Accept an intent: the run and its start event are committed before the answer.

    The payload is checked against the intent's input schema first (``GET /api/intents``): a payload
    that does not match is refused with 422 ``payload.invalid`` and nothing is written. The tenant must
    be the caller's; the tenant's rate limit is taken in the same transaction as the run.
    """
    return accept(body, s, who, idempotency_key)


def accept(body: Intent, s: Services, who: Principal, idempotency_key: str | None = None) -> dict[str, str]:
    """Admit and record one intent for ``who`` (``POST /api/intents`` and ``/api/orchestrator/execute``). Tracing
    on, the request is the run's root span, ``cogo.run <intent>`` (``bus/tracing.py``)."""
    tracer = tracing.active()
    if tracer is None:
        return _accept(body, s, who, idempotency_key)
    with tracer.ingress(tenant=body.tenant) as ingress:
        answer = _accept(body, s, who, idempotency_key, ingress)
        ingress.created(answer["id"], intent=body.intent)
        return answer


def _accept(body: Intent, s: Services, who: Principal, idempotency_key: str | None,
            ingress: tracing.Ingress | None = None) -> dict[str, str]:
    if not who.sees(body.tenant):
        raise Forbidden(f"this key acts for tenant {who.tenant!r}, not {body.tenant!r}", code="auth.tenant")
    definition = intents.admit(body, s.registry)
    asked = body
    body = intents.bounded(body, definition, max_cost_usd=s.settings.max_run_cost_usd,
                           max_tokens=s.settings.max_run_tokens)
    now = time.time()
    try:
        with s.engine.begin() as conn:
            if idempotency_key is not None:
                earlier = idempotency.earlier_run(conn, body.tenant, idempotency_key, asked)
                if earlier is not None:
                    return {"id": earlier}
            ratelimit.take(conn, body.tenant, now=now, rate_per_s=s.settings.rate_per_s, burst=s.settings.rate_burst)
            run_id, delivery = intents.create_run(conn, body, definition, now=now, shards=s.settings.shards,
                                                  run_id=None if ingress is None else ingress.run_id,
                                                  traceparent=None if ingress is None else ingress.traceparent)
            if idempotency_key is not None:
                idempotency.record(conn, body.tenant, idempotency_key, asked, run_id, now=now)
    except IntegrityError:
        if idempotency_key is None:
            raise
        with s.engine.connect() as conn:  # a concurrent request with the same key won: answer its run
            earlier = idempotency.earlier_run(conn, body.tenant, idempotency_key, asked)
        if earlier is None:
            raise
        return {"id": earlier}
    try:
        s.publisher.send([delivery])
    except CogoError:
        pass  # committed: the reclaimer sends the start event once the broker is back
    return {"id": run_id}


@router.get("/api/runs")
def list_runs(tenant: str | None = None, status: str | None = None, intent: str | None = None,
              limit: int = Query(50, ge=1, le=1000), s: Services = Depends(services),
              who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Recent runs, newest first; a tenant's key sees only its own."""
    if not who.is_admin and tenant not in (None, who.tenant):
        return {"runs": []}
    stmt = select(runs.c.id, runs.c.tenant, runs.c.intent, runs.c.workflow, runs.c.status, runs.c.parent_run_id,
                  runs.c.created_at, runs.c.ended_at)
    tenant = tenant_filter(who, tenant)
    if tenant:
        stmt = stmt.where(runs.c.tenant == tenant)
    if intent:
        stmt = stmt.where(runs.c.intent == intent)
    if status:
        stmt = stmt.where(runs.c.status == status)
    with s.engine.connect() as conn:
        rows = conn.execute(stmt.order_by(runs.c.created_at.desc()).limit(limit)).mappings().all()
    return {"runs": [with_iso(dict(r)) for r in rows]}


@router.get("/api/runs/{run_id}")
def get_run(run_id: str, s: Services = Depends(services),
            who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """One run: status, context, output, error."""
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        return run_view(conn, run_id)


@router.get("/api/runs/{run_id}/tokens")
def get_tokens(run_id: str, s: Services = Depends(services),
               who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Every token of the run."""
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        return {"tokens": token_rows(conn, run_id)}


@router.get("/api/runs/{run_id}/events")
def get_events(run_id: str, category: str | None = None, type: str | None = None,
               after_id: int = Query(0, ge=0), s: Services = Depends(services),
               who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """The run's introspection events in order, filtered by category or type prefix."""
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        return {"events": introspection.read(conn, run_id, category=category, type_prefix=type, after_id=after_id)}


@router.get("/api/runs/{run_id}/bus-events")
def get_bus_events(run_id: str, s: Services = Depends(services),
                   who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """The audit rows of the run's bus messages."""
    return {"events": _rows_of_run(s, who, run_id, bus_events, bus_events.c.id)}


@router.get("/api/runs/{run_id}/messages")
def get_messages(run_id: str, s: Services = Depends(services),
                 who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """The run's bus rows (assignments and brain events)."""
    return {"messages": _rows_of_run(s, who, run_id, agent_messages, agent_messages.c.created_at)}


def _rows_of_run(s: Services, who: Principal, run_id: str, table: Table, order: ColumnElement
                 ) -> list[dict[str, Any]]:
    """Every row of ``table`` that belongs to the run, in ``order``; a 404 when ``who`` cannot see the run."""
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        rows = conn.execute(select(table).where(table.c.run_id == run_id).order_by(order)).mappings().all()
    return [with_iso(dict(r)) for r in rows]
