"""``orchestrator-chat``: HTTP ingress and the API (FastAPI). Errors are JSON with a stable code."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, select

from bus import introspection
from bus.envelope import Intent
from bus.errors import CogoError, NotFound
from bus.outbox import Publisher
from bus.schema import agent_messages, bus_events
from bus.settings import Settings
from coordinator import intents
from coordinator.definitions import Registry
from coordinator.schema import runs
from coordinator.store import run_view

_STATUS = {"not_found": 404, "run.unknown": 404, "intent.unknown": 404, "workflow.unknown": 404,
           "conflict": 409, "ledger.unavailable": 503, "broker.unavailable": 503}


def _error(code: str, message: str, status: int, details: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}}, status_code=status)


def create_app(*, engine: Engine, publisher: Publisher, registry: Registry, settings: Settings) -> FastAPI:
    """The API app over one ledger and one broker."""
    app = FastAPI(title="cogo", version="0.1.0")

    @app.exception_handler(CogoError)
    async def _cogo_error(_req: Request, exc: CogoError) -> JSONResponse:
        status = _STATUS.get(exc.code, 404 if isinstance(exc, NotFound) else 400)
        return _error(exc.code, str(exc), status, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error("request.invalid", f"{field}: {first['msg']}", 422,
                      {"errors": [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        with engine.connect() as conn:
            conn.execute(select(1))
        return {"status": "ok"}

    @app.post("/api/intents", status_code=202)
    def post_intent(body: Intent) -> dict[str, str]:
        definition = intents.resolve(body.intent, registry)
        with engine.begin() as conn:
            run_id, delivery = intents.create_run(conn, body, definition, now=time.time(), shards=settings.shards)
        try:
            publisher.send([delivery])
        except CogoError:
            pass  # committed: the reclaimer sends the start event when the broker is back
        return {"id": run_id}

    @app.get("/api/runs")
    def list_runs(tenant: str | None = None, status: str | None = None,
                  limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        stmt = select(runs.c.id, runs.c.tenant, runs.c.intent, runs.c.workflow, runs.c.status,
                      runs.c.parent_run_id, runs.c.created_at, runs.c.ended_at)
        if tenant:
            stmt = stmt.where(runs.c.tenant == tenant)
        if status:
            stmt = stmt.where(runs.c.status == status)
        with engine.connect() as conn:
            rows = conn.execute(stmt.order_by(runs.c.created_at.desc()).limit(limit)).mappings().all()
        return {"runs": [dict(r) for r in rows]}

    @app.get("/api/runs/{run_id}")
    def get_run(run_id: str) -> dict[str, Any]:
        with engine.connect() as conn:
            return run_view(conn, run_id)

    @app.get("/api/runs/{run_id}/events")
    def get_events(run_id: str, category: str | None = None, type: str | None = None,
                   after_id: int = 0) -> dict[str, Any]:
        with engine.connect() as conn:
            run_view(conn, run_id)
            events = introspection.read(conn, run_id, category=category, type_prefix=type, after_id=after_id)
        return {"events": events}

    @app.get("/api/runs/{run_id}/bus-events")
    def get_bus_events(run_id: str) -> dict[str, Any]:
        with engine.connect() as conn:
            rows = conn.execute(select(bus_events).where(bus_events.c.run_id == run_id)
                                .order_by(bus_events.c.id)).mappings().all()
        return {"events": [dict(r) for r in rows]}

    @app.get("/api/runs/{run_id}/messages")
    def get_messages(run_id: str) -> dict[str, Any]:
        with engine.connect() as conn:
            rows = conn.execute(select(agent_messages).where(agent_messages.c.run_id == run_id)
                                .order_by(agent_messages.c.created_at)).mappings().all()
        return {"messages": [dict(r) for r in rows]}

    return app


def main(settings: Settings, name: str) -> None:
    """Serve the API on ``settings.api_host:api_port``."""
    import uvicorn

    from bus.celery_app import make_celery
    from bus.db import make_engine
    from ecosystem.readiness import mark_ready

    app = create_app(engine=make_engine(settings.database_url, pool_size=10),
                     publisher=Publisher(make_celery(settings, name=name)),
                     registry=Registry.builtin(), settings=settings)

    @app.on_event("startup")
    async def _ready() -> None:
        mark_ready()

    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level=settings.log_level.lower(),
                access_log=False)
