"""``orchestrator-chat``: HTTP ingress and the API (FastAPI). Errors are JSON with a stable code."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from sqlalchemy import select

from coordinator.api import agents, dead_letters, fleet, intents, keys, openapi, orchestrator, people, runs
from coordinator.api.cards import router as cards_router
from coordinator.api.dashboard import router as dashboard_router
from coordinator.api.deps import Services
from coordinator.api.errors import install_error_handlers
from coordinator.api.limits import BodyGuard
from coordinator.api.run_detail import router as run_detail_router
from coordinator.api.stream import router as stream_router

ROUTERS = [runs.router, intents.router, people.router, orchestrator.router, fleet.router, keys.router,
           agents.router, dead_letters.router]
ROUTERS += [dashboard_router, run_detail_router, stream_router]  # the dashboard (docs/dashboard.md)
ROUTERS += [cards_router]  # the metric cards the dashboard reads (docs/metrics.md)
"""Every router of the API; a module adds its router here."""


def create_app(services: Services) -> FastAPI:
    """The API app over one ledger and one broker.

    Every error answers the one body (``coordinator/api/errors.py``); ``/openapi.json`` says so, and
    ``/docs`` and ``/redoc`` work offline (``coordinator/api/openapi.py``).
    """
    app = FastAPI(title="cogo", version="0.1.0", description=openapi.DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url=openapi.OPENAPI_URL)
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(BodyGuard, max_bytes=services.settings.max_body_bytes)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Whether the API can reach its ledger (no credentials needed)."""
        with services.engine.connect() as conn:
            conn.execute(select(1))
        return {"status": "ok"}

    for router in ROUTERS:
        app.include_router(router)
    openapi.install(app)
    return app
