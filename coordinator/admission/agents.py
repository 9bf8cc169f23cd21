"""The ``agents`` admission policy: send work only where a live agent of the agent registry can take it.

- A route that the composition root does not declare and that no agent ever registered is a mistake that waiting
  cannot fix: denied at once, ``agents.no_agent_type``.
- A known route with no live agent (every one stopped or gone, or none registered yet at fleet start) waits,
  visibly, up to ``COGO_AGENT_WAIT_S`` after it began waiting for one, then is denied,
  ``agents.no_available_agent``.
- A route whose live agents serve neither the assignment's model (when they declare models) nor its contract
  version waits the same way, then is denied, ``agents.no_matching_agent``.

The registry is read at most once a second per process (``RegistryCache``, by the dispatcher's clock), so the
policy adds no statement per admission; a worker that registers is seen within that second plus the deferral's
next ask.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from bus import agents
from coordinator.admission import ADMIT, Ask, Setup, Verdict, defer, deny
from coordinator.timefmt import clock

REFRESH_S = 1.0
"""How old the cached registry may be."""


class RegistryCache:
    """The registry's per-route summary (``bus.agents.live_routes``), read again once it is ``REFRESH_S`` old."""

    def __init__(self, refresh_s: float = REFRESH_S):
        self.refresh_s = refresh_s
        self._routes: dict[str, agents.RouteAgents] = {}
        self._read_at: float | None = None

    def routes(self, conn: Connection, now: float) -> dict[str, agents.RouteAgents]:
        """Every route the registry knows, as of at most ``refresh_s`` before ``now``."""
        if self._read_at is None or not 0 <= now - self._read_at < self.refresh_s:
            self._routes, self._read_at = agents.live_routes(conn, now=now), now
        return self._routes


class AgentsPolicy:
    """Admits an assignment only when a live agent serves its route, model and version (see the module)."""

    name = "agents"

    def __init__(self, setup: Setup):
        self.declared = frozenset(f"{service}.{role}" for service, role in setup.routes)
        self.wait_s = setup.settings.agent_wait_s
        self.registry = RegistryCache()

    def check(self, ask: Ask) -> Verdict:
        """``agents.no_agent_type`` for an unknown route; else wait for a live agent that serves it."""
        route = ask.route
        known = self.registry.routes(ask.conn, ask.now).get(route)
        if known is None and route not in self.declared:
            return deny("agents.no_agent_type", f"no agent type serves {route}: no worker declares it and no agent "
                        "ever registered for it", route=route)
        known = known or agents.RouteAgents(route)
        model, version = ask.assignment.model, ask.assignment.version
        if known.live == 0:
            seen = (f"last seen at {clock(known.last_seen_at)}" if known.last_seen_at is not None
                    else "none has registered yet")
            return self._wait(ask, "agents.no_available_agent", f"no live agent serves {route} ({seen})",
                              route=route, last_seen_at=known.last_seen_at)
        if not known.serves_model(model) or version not in known.versions:
            serve = sorted(known.versions) if version not in known.versions else sorted(known.models or ())
            what = f"version {version!r}" if version not in known.versions else f"model {model!r}"
            return self._wait(ask, "agents.no_matching_agent",
                              f"no live agent of {route} serves {what} (they serve {', '.join(serve)})",
                              route=route, model=model, version=version, served_models=sorted(known.models or ()),
                              served_versions=sorted(known.versions))
        return ADMIT

    def _wait(self, ask: Ask, code: str, why: str, **detail: Any) -> Verdict:
        """Defer until ``wait_s`` after the assignment began waiting; deny once that has passed."""
        since = _waiting_since(ask)
        deadline = since + self.wait_s
        if ask.now >= deadline:
            return deny(code, f"{why}; waited {self.wait_s:g} s", waited_s=round(ask.now - since, 3), **detail)
        return defer(code, f"{why}; waiting up to {self.wait_s:g} s", deadline=deadline, **detail)


def _waiting_since(ask: Ask) -> float:
    """When the assignment began waiting for an agent: the start of its current ``agents.*`` wait (the dispatcher
    keeps it on the row), else now — not when it was created, so work that waited for something else (a slot, a
    budget), a backlog found at a restart or a re-queued dead letter gets its whole wait."""
    row = ask.row
    waiting_for = getattr(row, "waiting_for", None) or ""
    since = getattr(row, "waiting_since", None)
    return since if waiting_for.startswith("agents.") and since is not None else ask.now

