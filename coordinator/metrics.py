"""``cogo-metrics-server``: reads the ledger and serves Prometheus ``/metrics`` and the JSON cards of
seed 003 (``/api/metrics/bus/latency``, ``/api/metrics/workflows/*``). It writes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import Engine, Select, func, select

from bus.schema import agent_messages as m
from bus.schema import bus_events, introspection_events
from bus.settings import Settings
from coordinator import supervision_report
from coordinator.keys import Principal
from coordinator.schema import runs


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def _of_tenant(stmt: Select, tenant: str | None) -> Select:
    """``stmt`` over introspection events, restricted to runs of ``tenant`` (all tenants for None)."""
    if tenant is None:
        return stmt
    return stmt.where(introspection_events.c.run_id.in_(select(runs.c.id).where(runs.c.tenant == tenant)))


def bus_latency(engine: Engine, *, window_s: float, now: float, tenant: str | None = None) -> dict[str, Any]:
    """Queue wait (admitted → started) and run time (started → finished) of recent assignments, in ms."""
    kinds = ("dispatch.assignment.admitted", "dispatch.assignment.started", "dispatch.assignment.completed",
             "dispatch.assignment.failed")
    with engine.connect() as conn:
        rows = conn.execute(_of_tenant(select(introspection_events.c.type, introspection_events.c.data,
                                              introspection_events.c.created_at)
                                       .where(introspection_events.c.type.in_(kinds),
                                              introspection_events.c.created_at >= now - window_s), tenant)).all()
    seen: dict[tuple[str, int], dict[str, float]] = {}
    for row in rows:
        data = row.data or {}
        key = (data.get("assignment_id", ""), int(data.get("attempt", 0)))
        seen.setdefault(key, {})[row.type.rsplit(".", 1)[1]] = row.created_at
    waits = [(v["started"] - v["admitted"]) * 1000 for v in seen.values() if "started" in v and "admitted" in v]
    runs_ms = [(v.get("completed", v.get("failed", 0)) - v["started"]) * 1000 for v in seen.values()
               if "started" in v and ("completed" in v or "failed" in v)]
    return {"window_s": window_s, "assignments": len(seen),
            "queue_wait_ms": {"p50": percentile(waits, 0.5), "p90": percentile(waits, 0.9), "n": len(waits)},
            "run_ms": {"p50": percentile(runs_ms, 0.5), "p90": percentile(runs_ms, 0.9), "n": len(runs_ms)}}


def workflow_summary(engine: Engine, *, window_s: float, now: float, tenant: str | None = None) -> dict[str, Any]:
    """Runs by workflow and status, decision quality, the failure trend per hour and recent gates."""
    since = now - window_s
    mine = (lambda stmt: stmt) if tenant is None else (lambda stmt: stmt.where(runs.c.tenant == tenant))
    with engine.connect() as conn:
        counts = conn.execute(mine(select(runs.c.workflow, runs.c.status, func.count())
                                   .where(runs.c.created_at >= since)).group_by(runs.c.workflow, runs.c.status)).all()
        failed_at = [r.ended_at for r in conn.execute(mine(select(runs.c.ended_at).where(
            runs.c.status == "failed", runs.c.ended_at >= since)))]
        gates = conn.execute(_of_tenant(select(introspection_events.c.run_id, introspection_events.c.node_id,
                                               introspection_events.c.data, introspection_events.c.created_at)
                                        .where(introspection_events.c.type == "decision.gate.evaluate",
                                               introspection_events.c.created_at >= since), tenant)
                             .order_by(introspection_events.c.id.desc()).limit(20)).all()
    by_workflow: dict[str, dict[str, int]] = {}
    for workflow, status, n in counts:
        by_workflow.setdefault(workflow, {})[status] = n
    done = sum(v.get("completed", 0) for v in by_workflow.values())
    failed = sum(v.get("failed", 0) for v in by_workflow.values())
    trend: dict[int, int] = {}
    for t in failed_at:
        hour = int((now - t) // 3600)
        trend[hour] = trend.get(hour, 0) + 1
    return {"window_s": window_s, "runs": by_workflow,
            "decision_quality": (done / (done + failed)) if done + failed else None,
            "failures_by_hours_ago": [trend.get(h, 0) for h in range(max(1, min(int(window_s // 3600), 168)))],
            "recent_gates": [{"run_id": g.run_id, "node": g.node_id, "passed": (g.data or {}).get("passed"),
                              "value": (g.data or {}).get("value"), "at": g.created_at} for g in gates]}


class LedgerCollector:
    """Prometheus collector that reads the ledger (and the supervisor's report, under ``home``) on every scrape."""

    def __init__(self, engine: Engine, home: Path | None = None):
        self.engine, self.home = engine, home

    def collect(self) -> Iterator[Any]:
        """Gauges of bus rows and runs by status; counters of audit events by kind."""
        with self.engine.connect() as conn:
            bus = conn.execute(select(m.c.service, m.c.role, m.c.status, func.count())
                               .group_by(m.c.service, m.c.role, m.c.status)).all()
            run_counts = conn.execute(select(runs.c.workflow, runs.c.status, func.count())
                                      .group_by(runs.c.workflow, runs.c.status)).all()
            audit = conn.execute(select(bus_events.c.kind, func.count()).group_by(bus_events.c.kind)).all()
        g = GaugeMetricFamily("cogo_bus_messages", "Bus rows by route and status", labels=["service", "role", "status"])
        for service, role, status, n in bus:
            g.add_metric([service, role, status], n)
        yield g
        r = GaugeMetricFamily("cogo_runs", "Runs by workflow and status", labels=["workflow", "status"])
        for workflow, status, n in run_counts:
            r.add_metric([workflow, status], n)
        yield r
        c = CounterMetricFamily("cogo_bus_events", "Audit events by kind", labels=["kind"])
        for kind, n in audit:
            c.add_metric([kind], n)
        yield c
        yield from self._supervision()

    def _supervision(self) -> Iterator[Any]:
        """Restarts and crash loops as ``cogo up`` reports them; nothing when no supervisor here reports."""
        report = supervision_report.read(self.home) if self.home is not None else None
        if report is None:
            return
        restarts = CounterMetricFamily("cogo_process_restarts", "Restarts by the supervisor, per process copy",
                                       labels=["process", "copy"])
        looping = GaugeMetricFamily("cogo_process_crash_looping",
                                    "1 when the supervisor gave up on a crash-looping process (it stays stopped)",
                                    labels=["process", "copy"])
        for label, entry in sorted((report.get("processes") or {}).items()):
            restarts.add_metric([str(entry.get("process")), label], int(entry.get("restarts") or 0))
            looping.add_metric([str(entry.get("process")), label],
                               1 if entry.get("state") == supervision_report.CRASH_LOOPING else 0)
        yield restarts
        yield looping


MAX_WINDOW_S = 30 * 86400.0
"""The longest window a card may look back over (30 days)."""
WindowS = Query(gt=0, le=MAX_WINDOW_S, allow_inf_nan=False, description="seconds to look back (at most 30 days)")


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """The metrics app over one ledger: the JSON cards need a key (a tenant sees its own runs), /metrics admin."""
    from coordinator.api.auth import authenticate_request
    from coordinator.api.errors import install_error_handlers

    app = FastAPI(title="cogo metrics")
    install_error_handlers(app)
    registry = CollectorRegistry()
    registry.register(LedgerCollector(engine, settings.home))

    def caller(request: Request) -> Principal:
        who = authenticate_request(request, engine, settings)
        who.require("runs:read")
        return who

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics(who: Principal = Depends(caller)) -> Response:
        who.require("admin")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/metrics/bus/latency")
    def latency(window_s: float = WindowS, who: Principal = Depends(caller)) -> dict[str, Any]:
        return bus_latency(engine, window_s=window_s, now=time.time(), tenant=None if who.is_admin else who.tenant)

    @app.get("/api/metrics/workflows/summary")
    def summary(window_s: float = WindowS, who: Principal = Depends(caller)) -> dict[str, Any]:
        return workflow_summary(engine, window_s=window_s, now=time.time(),
                                tenant=None if who.is_admin else who.tenant)

    return app
