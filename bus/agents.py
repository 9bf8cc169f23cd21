"""The agent registry: which worker processes can take work, on which routes, and whether they are alive.

Every worker process registers on start (a row of ``agents``: its id ``<process>@<hostname>:<pid>``, routes,
the assignment contract version it serves, the models it serves, its capacity), writes a heartbeat every
``COGO_AGENT_HEARTBEAT_S`` from a daemon thread (with its state, idle or busy, how many assignments it runs and
has run: counted in memory, so an assignment costs no statement), and marks itself stopped on a clean stop.
One that misses ``GONE_AFTER`` of its own heartbeat intervals is *gone*: derived when the registry is read,
never written, so a ``kill -9`` needs nobody to notice it (its running assignments come back through the lease
rule). Stopped and gone rows are kept ``KEEP_S`` for the operator, then pruned by the next registration.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, or_, select, update

from bus.envelope import Assignment
from bus.schema import agents as a

log = logging.getLogger(__name__)

IDLE, BUSY, STOPPED, GONE = "idle", "busy", "stopped", "gone"
GONE_AFTER = 3
"""Heartbeat intervals an agent may miss before it is shown gone."""
KEEP_S = 86_400.0
"""How long a stopped or gone agent stays listed before a registration prunes it."""
CONTRACT_VERSION: str = Assignment.model_fields["version"].default
"""The assignment contract version a worker serves unless it says otherwise (``Assignment.version``'s default)."""


def _software() -> str:
    try:
        return package_metadata.version("cogo")
    except package_metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Agent:
    """One worker process as it registers."""

    process: str
    routes: tuple[str, ...]
    """``service.role`` of every route it consumes."""
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = CONTRACT_VERSION
    software: str = field(default_factory=_software)
    models: tuple[str, ...] = ()
    """The models it serves; empty: any."""
    capacity: int = 1
    """Assignments it runs at once (1 in the solo pool)."""
    heartbeat_s: float = 2.0

    @property
    def agent_id(self) -> str:
        """``<process>@<hostname>:<pid>``."""
        return f"{self.process}@{self.hostname}:{self.pid}"


def register(conn: Connection, agent: Agent, *, now: float) -> None:
    """Write ``agent``'s row afresh (idle, nothing run yet) and prune rows stopped or gone for ``KEEP_S``."""
    conn.execute(delete(a).where(or_(a.c.agent_id == agent.agent_id, a.c.stopped_at < now - KEEP_S,
                                     and_(a.c.stopped_at.is_(None), a.c.heartbeat_at < now - KEEP_S))))
    conn.execute(insert(a).values(
        agent_id=agent.agent_id, process=agent.process, hostname=agent.hostname, pid=agent.pid,
        routes=list(agent.routes), version=agent.version, software=agent.software, models=list(agent.models),
        capacity=agent.capacity, state=IDLE, running=0, assignments_done=0, heartbeat_s=agent.heartbeat_s,
        started_at=now, heartbeat_at=now, stopped_at=None))


def heartbeat(conn: Connection, agent_id: str, *, running: int, done: int, now: float) -> bool:
    """Record that ``agent_id`` is alive, busy while it runs anything; False when it has no live row (pruned,
    or stopped): the caller registers again."""
    changed = conn.execute(update(a).where(a.c.agent_id == agent_id, a.c.stopped_at.is_(None)).values(
        state=BUSY if running else IDLE, running=running, assignments_done=done, heartbeat_at=now))
    return changed.rowcount > 0


def unregister(conn: Connection, agent_id: str, *, now: float, done: int | None = None) -> bool:
    """Mark ``agent_id`` stopped (a clean stop); False when it was not registered or already stopped."""
    values: dict[str, Any] = {"state": STOPPED, "running": 0, "stopped_at": now}
    if done is not None:
        values["assignments_done"] = done
    changed = conn.execute(update(a).where(a.c.agent_id == agent_id, a.c.stopped_at.is_(None)).values(**values))
    return changed.rowcount > 0


def is_gone(row: Any, now: float) -> bool:
    """Whether a registry row is an agent that stopped heartbeating without stopping."""
    return row.stopped_at is None and now - row.heartbeat_at > GONE_AFTER * row.heartbeat_s


def read(conn: Connection) -> list[Any]:
    """Every registry row (one statement)."""
    return conn.execute(select(a)).all()


def list_agents(rows: Iterable[Any], *, now: float) -> list[dict[str, Any]]:
    """Every listed agent of ``rows`` (``read``), live first then by id, with ``state`` idle, busy, stopped or
    gone, ``alive`` and the age of its last heartbeat."""
    found = []
    for row in rows:
        gone = is_gone(row, now)
        found.append({**row._asdict(), "routes": list(row.routes or []), "models": list(row.models or []),
                      "state": GONE if gone else row.state, "alive": row.stopped_at is None and not gone,
                      "heartbeat_age_s": max(0.0, now - row.heartbeat_at)})
    return sorted(found, key=lambda r: (not r["alive"], r["agent_id"]))


@dataclass(frozen=True)
class RouteAgents:
    """What the registry knows of one route: its live agents and when any agent of it was last heard from."""

    route: str
    live: int = 0
    capacity: int = 0
    """The sum of its live agents' capacities."""
    versions: frozenset[str] = frozenset()
    """Contract versions its live agents serve."""
    models: frozenset[str] | None = frozenset()
    """Models its live agents serve; None: at least one serves any model."""
    last_seen_at: float | None = None
    """The latest heartbeat of any agent of the route, live or not."""

    def serves_model(self, model: str) -> bool:
        """Whether a live agent of the route serves ``model``."""
        return self.live > 0 and (self.models is None or model in self.models)


def live_routes(conn: Connection, *, now: float) -> dict[str, RouteAgents]:
    """Every route any listed agent serves or served, with its live agents summed (one statement)."""
    rows = conn.execute(select(a.c.routes, a.c.version, a.c.models, a.c.capacity, a.c.heartbeat_at,
                               a.c.heartbeat_s, a.c.stopped_at)).all()
    return summarise(rows, now=now)


def summarise(rows: Iterable[Any], *, now: float) -> dict[str, RouteAgents]:
    """``live_routes`` of registry rows already read."""
    found: dict[str, RouteAgents] = {}
    for row in rows:
        alive = row.stopped_at is None and not is_gone(row, now)
        for route in row.routes or []:
            known = found.get(route) or RouteAgents(route)
            seen = row.heartbeat_at if known.last_seen_at is None else max(known.last_seen_at, row.heartbeat_at)
            if alive:
                models = None if known.models is None or not row.models else known.models | set(row.models)
                known = RouteAgents(route, known.live + 1, known.capacity + row.capacity,
                                    known.versions | {row.version}, models, seen)
            else:
                known = RouteAgents(route, known.live, known.capacity, known.versions, known.models, seen)
            found[route] = known
    return found


class Presence:
    """A worker process's entry in the registry, kept alive by a heartbeat thread.

    ``track`` wraps the process's handler to count what runs, in memory; the heartbeat writes the count. Every
    write is best effort: a database outage costs heartbeats (the agent looks gone for a while), never work.
    """

    def __init__(self, engine: Engine, agent: Agent, *, clock: Callable[[], float] = time.time):
        self.engine, self.agent, self.clock = engine, agent, clock
        self.running = self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat: float | None = None

    def track(self, handle: Callable[[str], Any]) -> Callable[[str], Any]:
        """``handle`` counted: running while it runs, done once it returns or raises."""
        def tracked(message_id: str) -> Any:
            with self._lock:
                self.running += 1
            try:
                return handle(message_id)
            finally:
                with self._lock:
                    self.running -= 1
                    self.done += 1
        return tracked

    def start(self, *, heartbeats: bool = True) -> Presence:
        """Register, and (``heartbeats``) start the daemon thread that writes a heartbeat every interval."""
        self._write("registration", lambda conn, now: register(conn, self.agent, now=now))
        if heartbeats and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="agent-heartbeat", daemon=True)
            self._thread.start()
        return self

    def beat(self) -> None:
        """Write one heartbeat (registering again if the row is gone from the table); none once stopped."""
        if self._stop.is_set():
            return
        with self._lock:
            running, done = self.running, self.done

        def write(conn: Connection, now: float) -> None:
            if not heartbeat(conn, self.agent.agent_id, running=running, done=done, now=now):
                register(conn, self.agent, now=now)
                heartbeat(conn, self.agent.agent_id, running=running, done=done, now=now)
        self._write("heartbeat", write)

    def beat_if_due(self) -> None:
        """A heartbeat when the last one is an interval old by ``clock`` (for a process without the thread)."""
        if self._last_beat is None or self.clock() - self._last_beat >= self.agent.heartbeat_s:
            self.beat()

    def stop(self) -> None:
        """Stop heartbeating and mark the agent stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.agent.heartbeat_s + 5)
            self._thread = None
        with self._lock:
            done = self.done
        self._write("unregistration", lambda conn, now: unregister(conn, self.agent.agent_id, now=now, done=done))

    def _loop(self) -> None:
        while not self._stop.wait(self.agent.heartbeat_s):
            self.beat()

    def _write(self, what: str, step: Callable[[Connection, float], object]) -> None:
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                step(conn, now)
            self._last_beat = now
        except Exception as exc:  # the registry is advisory: never let it stop a worker
            log.warning("agent %s: %s failed: %s", self.agent.agent_id, what, exc)
