"""The fleet as an operator sees it: which processes answer, how deep each queue is, what waits longest.

``GET /api/fleet`` reports only what it can observe, and says where each answer comes from:

- Celery consumers: the replies to one broadcast (``inspect().active_queues()``) within a short timeout;
  a reply names the process (``<process>@<host>.<pid>``, see ``bus/consumer.py``) and the queues it
  consumes. A solo-pool consumer busy with a long task cannot reply: ``running`` on its route says so.
- HTTP processes other than the API (metrics, Flower): an HTTP answer on their configured port at the
  API's host. No answer there is not proof that they are down (they may run on another host).
- Supervision: what ``cogo up`` on the API's host knows (``coordinator/supervision_report.py``): each
  process copy running, restarting or crash-looping (given up on, left stopped), its restarts and last exit.
  ``null`` when no supervisor on this host writes a report.
- Queues: for every routed queue (the brain's and dispatcher's per shard, every task route of the
  loaded workflows per shard, and any queue seen in a reply or in the ledger), the broker's depth
  and the ledger's untaken rows (queued, dispatched, due retry_wait) with the oldest one's times.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx
from celery import Celery
from fastapi import APIRouter, Depends
from sqlalchemy import Connection, func, or_, select

from bus import ledger
from bus.broker import queue_depth
from bus.routing import DECIDE, EXECUTE, ORCHESTRATOR, queue_name
from bus.schema import agent_messages as m
from bus.settings import Settings
from coordinator import supervision_report
from coordinator.api.auth import scoped
from coordinator.api.deps import Services, services
from coordinator.definitions import Registry, TaskNode
from coordinator.keys import Principal
from coordinator.timefmt import with_iso

router = APIRouter()

REPLY_TIMEOUT_S = 1.0
"""How long the broadcast waits for consumers' replies."""
PROBE_TIMEOUT_S = 1.0
"""How long an HTTP probe of the metrics server or Flower waits."""
HTTP_PROCESSES = ("metrics_port", "flower_port")
"""The Settings fields of the HTTP processes the API probes (the process table's ``port_setting``)."""


@dataclass(frozen=True, slots=True)
class Consumers:
    """What the broadcast found: one entry per replying consumer, or the broker's error."""

    replies: list[dict[str, Any]]
    error: str | None = None


@router.get("/api/fleet")
def get_fleet(s: Services = Depends(services), _who: Principal = Depends(scoped("admin"))) -> dict[str, Any]:
    """Which processes answer, each routed queue's depth and untaken rows, and the oldest waiting row (admin)."""
    now = time.time()
    consumers = ask_consumers(s.publisher.app)
    with s.engine.connect() as conn:
        waiting = untaken_rows(conn, now=now)
        running = running_rows(conn, now=now)
    names = routed_queues(s.registry, s.settings.shards) | {q for c in consumers.replies for q in c["queues"]} \
        | set(waiting) | set(running)
    depths = {q: queue_depth(s.publisher.app, q) for q in sorted(names)} if consumers.error is None else {}
    queues = [{"queue": q, "broker_depth": depths.get(q), **waiting.get(q, _NOTHING_WAITING),
               "running": running.get(q, 0)} for q in sorted(names)]
    return with_iso({
        "checked_at": now,
        "shards": s.settings.shards,
        "api": {"state": "up", "hostname": socket.gethostname(), "pid": os.getpid()},
        "broker": {"reachable": consumers.error is None, "error": consumers.error},
        "consumers": consumers.replies,
        "consumer_source": f"replies to one broadcast within {REPLY_TIMEOUT_S:g} s",
        "http": {setting: probe_http(s.settings, setting) for setting in HTTP_PROCESSES},
        "queues": queues,
        "supervision": supervision_report.read(s.settings.home),
    })


def ask_consumers(app: Celery, timeout_s: float = REPLY_TIMEOUT_S) -> Consumers:
    """Every Celery consumer that answers a broadcast within ``timeout_s``, with the queues it consumes."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            answers = app.control.inspect(timeout=timeout_s, connection=conn).active_queues() or {}
    except Exception as exc:  # kombu raises many transport types: the broker cannot answer
        return Consumers([], f"{type(exc).__name__}: {exc}")
    replies = []
    for hostname, queues in sorted(answers.items()):
        name, _, where = str(hostname).partition("@")
        replies.append({"name": name, "hostname": str(hostname), "host": where or None,
                        "queues": sorted(str(q.get("name")) for q in queues or [] if isinstance(q, dict))})
    return Consumers(replies)


def probe_http(settings: Settings, port_setting: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """``up`` when an HTTP server answers on the setting's port at the API's host, else ``unknown``."""
    host = "127.0.0.1" if settings.api_host in ("", "0.0.0.0", "::") else settings.api_host
    url = f"http://{host}:{getattr(settings, port_setting)}"
    try:
        answer = httpx.get(url + "/", timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        return {"state": "unknown", "url": url,
                "detail": f"no answer at {url} from the API's host ({type(exc).__name__}); it may run elsewhere"}
    return {"state": "up", "url": url, "detail": f"HTTP {answer.status_code} from {url}"}


def routed_queues(registry: Registry, shards: int) -> set[str]:
    """The brain's and dispatcher's queues and every task route of the loaded workflows, per shard."""
    routes = {(ORCHESTRATOR, DECIDE), (ORCHESTRATOR, EXECUTE)}
    for name in registry.names():
        for version in registry.versions(name):
            routes |= {(n.route.service, n.route.role) for n in registry.get(name, version).nodes.values()
                       if isinstance(n, TaskNode)}
    return {queue_name(service, role, shard) for service, role in routes for shard in range(shards)}


def waiting_queue(service: str, role: str, shard: int, status: str) -> str:
    """The queue an untaken row waits on: its brain's, its dispatcher's, or (dispatched) its worker's."""
    if service == ORCHESTRATOR and role == DECIDE:
        return queue_name(ORCHESTRATOR, DECIDE, shard)
    if status == ledger.DISPATCHED:
        return queue_name(service, role, shard)
    return queue_name(ORCHESTRATOR, EXECUTE, shard)


_NOTHING_WAITING: dict[str, Any] = {"waiting": 0, "by_status": {}, "oldest_created_at": None,
                                    "oldest_updated_at": None, "oldest_age_s": None, "scheduled": 0}


def untaken_rows(conn: Connection, *, now: float) -> dict[str, dict[str, Any]]:
    """Per queue: ledger rows nobody has taken (queued, dispatched, due retry_wait), and the oldest of them.

    A row due later (a timer, a retry's backoff) is not waiting yet: it is counted as ``scheduled``.
    """
    due = or_(m.c.retry_at.is_(None), m.c.retry_at <= now)
    stmt = (select(m.c.service, m.c.role, m.c.shard, m.c.status, due.label("due"), func.count(),
                   func.min(m.c.created_at), func.min(m.c.updated_at))
            .where(m.c.status.in_((ledger.QUEUED, ledger.DISPATCHED, ledger.RETRY_WAIT)))
            .group_by(m.c.service, m.c.role, m.c.shard, m.c.status, due))
    found: dict[str, dict[str, Any]] = {}
    for service, role, shard, status, is_due, count, created, updated in conn.execute(stmt):
        entry = found.setdefault(waiting_queue(service, role, shard, status),
                                 {**_NOTHING_WAITING, "by_status": {}})
        if not is_due:
            entry["scheduled"] += count
            continue
        entry["waiting"] += count
        entry["by_status"][status] = entry["by_status"].get(status, 0) + count
        entry["oldest_created_at"] = _least(entry["oldest_created_at"], created)
        entry["oldest_updated_at"] = _least(entry["oldest_updated_at"], updated)
    for entry in found.values():
        if entry["oldest_created_at"] is not None:
            entry["oldest_age_s"] = max(0.0, now - entry["oldest_created_at"])
    return found


def running_rows(conn: Connection, *, now: float) -> dict[str, int]:
    """Per worker queue: assignments running under a live lease (their consumer is busy, not gone)."""
    stmt = (select(m.c.service, m.c.role, m.c.shard, func.count())
            .where(m.c.status == ledger.RUNNING, m.c.lease_until > now)
            .group_by(m.c.service, m.c.role, m.c.shard))
    return {queue_name(service, role, shard): count for service, role, shard, count in conn.execute(stmt)}


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
