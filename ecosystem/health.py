"""``cogo health <process>``: whether one process of this host answers, for a container's health check.

Each kind answers in its own way, and each check is the cheapest that proves the process does its job:

- ``http``: ``GET /healthz`` on its port answers 200;
- ``flower``: its port accepts a connection (its pages sit behind a login);
- ``celery``: a consumer of that name on this host answers a ``ping`` broadcast through the broker (so a worker
  that lost its broker is unhealthy; a solo-pool worker busy with a long task cannot answer and shows unhealthy
  meanwhile, which restarts nothing under compose);
- ``loop``: it ticked recently: its ready file (``COGO_READY_FILE``), touched on every tick, is fresh.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx

from bus.readiness import READY_ENV
from bus.settings import Settings
from ecosystem.processes import Process

TIMEOUT_S = 5.0


def check(process: Process, settings: Settings) -> str | None:
    """None when ``process`` answers on this host; else why not, in words."""
    if process.kind == "http":
        return _http(f"http://127.0.0.1:{getattr(settings, process.port_setting or '')}/healthz")
    if process.kind == "flower":
        return _port(int(getattr(settings, process.port_setting or "")))
    if process.kind == "celery":
        return _celery(process, settings)
    return _loop(float(getattr(settings, process.interval_setting or "reclaim_interval_s")))


def _http(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{url}: {exc}"
    return None if response.status_code == 200 else f"{url} answered {response.status_code}"


def _port(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
            return None
    except OSError as exc:
        return f"port {port}: {exc}"


def _celery(process: Process, settings: Settings) -> str | None:
    from bus.celery_app import make_celery

    app = make_celery(settings, name=f"{process.name}-health")
    pattern = f"{process.name}@{socket.gethostname()}.*"
    try:
        replies = app.control.broadcast("ping", reply=True, timeout=TIMEOUT_S, pattern=pattern, matcher="glob")
    except Exception as exc:  # the broker's own error, whatever its transport
        return f"the broker cannot be asked: {exc}"
    return None if replies else f"no consumer {pattern} answered a ping within {TIMEOUT_S:g}s"


def _loop(interval_s: float) -> str | None:
    path = os.environ.get(READY_ENV)
    if not path:
        return f"{READY_ENV} is not set: a loop process touches that file on every tick"
    stale_after_s = max(30.0, 3 * interval_s)
    try:
        age = time.time() - Path(path).stat().st_mtime
    except OSError:
        return f"{path} does not exist: the process has not ticked yet"
    return None if age <= stale_after_s else f"last tick {age:.0f}s ago (more than {stale_after_s:g}s)"
