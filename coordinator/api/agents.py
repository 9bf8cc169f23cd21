"""``GET /api/agents``: the agent registry as an operator sees it (admin).

Every worker process that registered (``bus/agents.py``): its routes, state (idle, busy, stopped, or gone when it
missed three heartbeats), last heartbeat, capacity, version and models; and per route, what its live agents can
take — every route the loaded workflows use is listed, so one that no agent serves shows as such.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from bus import agents
from coordinator.api.auth import scoped
from coordinator.api.deps import Services, services
from coordinator.definitions import Registry, TaskNode
from coordinator.keys import Principal
from coordinator.timefmt import with_iso

router = APIRouter()


@router.get("/api/agents")
def get_agents(s: Services = Depends(services), _who: Principal = Depends(scoped("admin"))) -> dict[str, Any]:
    """Every registered agent with its state and last heartbeat, and each route's live agents (admin)."""
    now = time.time()
    with s.engine.connect() as conn:
        rows = agents.read(conn)
    listed = agents.list_agents(rows, now=now)
    summary = agents.summarise(rows, now=now)
    routes = {route: summary.get(route) or agents.RouteAgents(route) for route in set(summary) | used(s.registry)}
    return with_iso({
        "checked_at": now,
        "gone_after_heartbeats": agents.GONE_AFTER,
        "agents": listed,
        "routes": [_route(routes[r]) for r in sorted(routes)],
    })


def used(registry: Registry) -> set[str]:
    """``service.role`` of every task node of the loaded workflows."""
    return {f"{n.route.service}.{n.route.role}" for name in registry.names() for version in registry.versions(name)
            for n in registry.get(name, version).nodes.values() if isinstance(n, TaskNode)}


def _route(known: agents.RouteAgents) -> dict[str, Any]:
    return {"route": known.route, "live": known.live, "capacity": known.capacity,
            "versions": sorted(known.versions), "models": None if known.models is None else sorted(known.models),
            "last_seen_at": known.last_seen_at}
