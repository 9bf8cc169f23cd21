"""The dashboard's metric cards (seed 003) as JSON: bus latency per route, the workflow summary (decision quality,
failures per hour, recent gates) and spend by tenant and model. Served by the API (the dashboard reads them with
its key) and by ``cogo-metrics-server`` at the same paths; computed by ``coordinator/metrics/cards.py``. A key
sees its tenant's rows; an admin's every tenant's."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from coordinator.api.auth import scoped, tenant_filter
from coordinator.api.deps import Services, services
from coordinator.keys import Principal
from coordinator.metrics import cards

router = APIRouter()

MAX_WINDOW_S = 30 * 86400.0
"""The longest window a card may look back over (30 days)."""


def now(request: Request) -> float:
    """The time the cards are computed at: the app's clock (``app.state.clock``, when it has one), else the wall
    clock."""
    clock = getattr(request.app.state, "clock", None)
    return clock() if callable(clock) else time.time()


def _window(default: float) -> Any:
    return Query(default, gt=0, le=MAX_WINDOW_S, allow_inf_nan=False,
                 description="seconds to look back (at most 30 days)")


@router.get("/api/metrics/bus/latency")
def bus_latency(window_s: float = _window(3600.0), s: Services = Depends(services), at: float = Depends(now),
                who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Queue wait and run time p50/p90 (ms) of the attempts that ended in the window, per route and overall."""
    with s.engine.connect() as conn:
        return cards.bus_latency(conn, window_s=window_s, now=at, tenant=tenant_filter(who, None))


@router.get("/api/metrics/workflows/summary")
def workflow_summary(window_s: float = _window(86400.0), s: Services = Depends(services), at: float = Depends(now),
                     who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Runs by workflow and status, decision quality, failed runs per hour and the latest gate verdicts."""
    with s.engine.connect() as conn:
        return cards.workflow_summary(conn, window_s=window_s, now=at, tenant=tenant_filter(who, None))


@router.get("/api/metrics/targets")
def targets(s: Services = Depends(services), at: float = Depends(now),
            who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Seed 003's targets (bus failure rate, average queue wait, decision quality), judged as the alert rules
    judge them: each with its value, whether it is met (null: nothing to judge) and the alert that watches it."""
    with s.engine.connect() as conn:
        return cards.targets(conn, now=at, tenant=tenant_filter(who, None))


@router.get("/api/metrics/spend")
def spend(s: Services = Depends(services), who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Settled cost (USD) and tokens by tenant and model since the ledger began."""
    with s.engine.connect() as conn:
        return cards.spend(conn, tenant=tenant_filter(who, None))
