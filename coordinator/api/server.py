"""``orchestrator-chat``: HTTP ingress and the API (FastAPI). Errors are JSON with a stable code."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus.errors import CogoError, NotFound
from bus.settings import Settings
from coordinator.api import fleet, orchestrator, people, runs
from coordinator.api.deps import Services

log = logging.getLogger(__name__)
ROUTERS = [runs.router, people.router, orchestrator.router, fleet.router]
"""Every router of the API; a module adds its router here."""

_STATUS = {"run.unknown": 404, "intent.unknown": 404, "workflow.unknown": 404, "conflict": 409,
           "approval.unknown": 404, "approval.not_pending": 409, "run.terminal": 409,
           "ledger.unavailable": 503, "broker.unavailable": 503}


def _error(code: str, message: str, status: int, details: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}}, status_code=status)


def create_app(services: Services) -> FastAPI:
    """The API app over one ledger and one broker."""
    app = FastAPI(title="cogo", version="0.1.0")
    app.state.services = services

    @app.exception_handler(CogoError)
    async def _cogo_error(_req: Request, exc: CogoError) -> JSONResponse:
        status = _STATUS.get(exc.code, 404 if isinstance(exc, NotFound) else 400)
        return _error(exc.code, str(exc), status, exc.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method.not_allowed"}.get(exc.status_code, "http.error")
        return _error(code, str(exc.detail), exc.status_code)

    @app.exception_handler(DBAPIError)
    async def _ledger(_req: Request, exc: DBAPIError) -> JSONResponse:
        log.error("ledger error: %s", exc)
        return _error("ledger.unavailable", "the ledger cannot answer right now; try again", 503)

    @app.exception_handler(Exception)
    async def _bug(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error("internal", f"internal error: {type(exc).__name__}", 500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                  for e in exc.errors()]
        return _error("request.invalid", f"{errors[0]['field']}: {errors[0]['message']}", 422, {"errors": errors})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        with services.engine.connect() as conn:
            conn.execute(select(1))
        return {"status": "ok"}

    for router in ROUTERS:
        app.include_router(router)
    return app


def main(settings: Settings, name: str) -> None:
    """Serve the API on ``settings.api_host:api_port``."""
    import uvicorn

    from bus.celery_app import make_celery
    from bus.db import make_engine
    from bus.outbox import Publisher
    from coordinator.definitions import Registry
    from ecosystem.readiness import mark_ready

    app = create_app(Services(engine=make_engine(settings.database_url, pool_size=10),
                              publisher=Publisher(make_celery(settings, name=name)),
                              registry=Registry.load(settings.workflows_dir), settings=settings))
    app.router.on_startup.append(mark_ready)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level=settings.log_level.lower(),
                access_log=False)
