"""The JSON cards of seed 003's dashboard, each from bounded reads: recent audit rows through the index on
``bus_events(kind, created_at)`` (a tenant's through ``bus_events(tenant, kind, created_at)``), runs through the
index on ``runs(status, updated_at)``, and the folded counters.

A window's audit rows are read newest first, at most ``SAMPLE`` of each kind (of the key's tenant, filtered in the
query: another tenant's traffic never crowds a small tenant's rows out). When a kind has more than that in the
window, the card covers the most recent part of the window in which every kind it reads is complete (so a busy
window is summed over its latest stretch, never over a mix biased towards the rarer kinds). ``None`` where there is
nothing to tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from bus.schema import bus_events as be
from bus.schema import introspection_events as ie
from bus.schema import metric_totals as mt
from coordinator.metrics import families as f
from coordinator.metrics.families import decision_quality, parse_labels
from coordinator.metrics.fold import ENDS
from coordinator.schema import runs
from coordinator.state import RUN_CANCELLED, RUN_COMPLETED, RUN_FAILED, RUN_PENDING, RUN_RUNNING, RUN_WAITING

SAMPLE = 2000
"""The most audit rows of one kind a card reads."""
MAX_HOURS = 168
GATES_SHOWN = 20
RUN_STATUSES = (RUN_PENDING, RUN_RUNNING, RUN_WAITING, RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED)
ATTEMPT_ENDS = ("execute_done", "execute_retry", "execute_failed")
"""The worker's rows that close an attempt (``end``, ``wait_s``, ``run_s``: ``workers/runtime.py``)."""
ASSIGNMENT_ENDS = ("execute_done", "execute_failed", "execute_dead", "policy_denied", "budget_violation",
                   "dead_letter_discarded")
"""Rows that may end an assignment (those whose ``end`` says so: ``fold.ENDS``)."""
GATE = "decision.gate.evaluate"
COMPLETED = "dispatch.assignment.completed"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _stats(values_ms: list[float]) -> dict[str, Any]:
    return {"p50": percentile(values_ms, 0.5), "p90": percentile(values_ms, 0.9), "n": len(values_ms)}


def recent(conn: Connection, kinds: Sequence[str], *, since: float, tenant: str | None) -> list[Any]:
    """The audit rows of ``kinds`` of ``tenant`` (None: every tenant's) written since ``since`` — or, when a kind
    has more than ``SAMPLE`` of them, since the oldest of the newest ``SAMPLE`` of that kind. One bounded read per
    kind, through the index on ``(tenant, kind, created_at)`` (or ``(kind, created_at)``)."""
    found: list[Any] = []
    start = since
    for kind in kinds:
        stmt = (select(be.c.attempt, be.c.detail, be.c.created_at).where(be.c.kind == kind, be.c.created_at >= since)
                .order_by(be.c.created_at.desc()).limit(SAMPLE))
        rows = conn.execute(stmt if tenant is None else stmt.where(be.c.tenant == tenant)).all()
        if len(rows) == SAMPLE:
            start = max(start, rows[-1].created_at)
        found += rows
    return [r for r in found if r.created_at >= start and isinstance(r.detail, dict)]


def bus_latency(conn: Connection, *, window_s: float, now: float, tenant: str | None = None) -> dict[str, Any]:
    """Queue wait (dispatched → a worker took it) and run time (taken → outcome) of the attempts that ended in the
    window, in milliseconds, per route (``service.role``) and over all routes."""
    per_route: dict[str, tuple[list[float], list[float]]] = {}
    for row in recent(conn, ATTEMPT_ENDS, since=now - window_s, tenant=tenant):
        route, end = row.detail.get("route"), row.detail.get("end")
        if not isinstance(route, str) or not isinstance(end, str):
            continue  # an attempt's first row, the one closing it says how it ended
        waits, runs_ms = per_route.setdefault(route, ([], []))
        for values, key in ((waits, "wait_s"), (runs_ms, "run_s")):
            seconds = row.detail.get(key)
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                values.append(float(seconds) * 1000)
    every_wait = [w for waits, _ in per_route.values() for w in waits]
    every_run = [r for _, runs_ms in per_route.values() for r in runs_ms]
    return {"window_s": window_s,
            "routes": {route: {"queue_wait_ms": _stats(waits), "run_ms": _stats(runs_ms)}
                       for route, (waits, runs_ms) in sorted(per_route.items())},
            "queue_wait_ms": _stats(every_wait), "run_ms": _stats(every_run)}


def workflow_summary(conn: Connection, *, window_s: float, now: float, tenant: str | None = None) -> dict[str, Any]:
    """Runs by workflow and status (those that changed in the window), decision quality over the assignments that
    ended in the window, failed runs per hour, and the latest gate verdicts."""
    since = now - window_s
    quality, ended = _decision_quality(conn, since, tenant)
    return {"window_s": window_s, "runs": _runs(conn, since, tenant), "decision_quality": quality,
            "decision_quality_n": ended, "decision_quality_definition": f.DECISION_QUALITY_TEXT,
            "failures_by_hour": _failures_by_hour(conn, window_s, now, tenant),
            "recent_gates": _gates(conn, since, tenant)}


def _runs(conn: Connection, since: float, tenant: str | None) -> dict[str, dict[str, int]]:
    stmt = (select(runs.c.workflow, runs.c.status, func.count())
            .where(runs.c.status.in_(RUN_STATUSES), runs.c.updated_at >= since)
            .group_by(runs.c.workflow, runs.c.status))
    if tenant is not None:
        stmt = stmt.where(runs.c.tenant == tenant)
    found: dict[str, dict[str, int]] = {}
    for workflow, status, n in conn.execute(stmt):
        found.setdefault(workflow, {})[status] = n
    return found


def _ended(conn: Connection, since: float, tenant: str | None) -> list[Any]:
    """The closing rows of the assignments that ended since ``since`` (one per assignment)."""
    return [r for r in recent(conn, ASSIGNMENT_ENDS, since=since, tenant=tenant) if r.detail.get("end") in ENDS
            and isinstance(r.detail.get("route"), str)]


def _decision_quality(conn: Connection, since: float, tenant: str | None) -> tuple[float | None, int]:
    """``families.decision_quality`` over the assignments that ended in the window, and how many ended."""
    ends = _ended(conn, since, tenant)
    return _quality(ends), len(ends)


def _quality(ends: list[Any]) -> float | None:
    """``families.decision_quality`` of the closing rows ``ends`` (``_ended``): the first-attempt done among them."""
    return decision_quality(sum(1 for r in ends if r.detail["end"] == "done" and r.attempt == 1), len(ends))


FAILURE_WINDOW_S = 86400.0
WAIT_WINDOW_S = 900.0
"""The windows of seed 003's targets, as the alert rules judge them (``ecosystem/observability.py``)."""


def targets(conn: Connection, *, now: float, tenant: str | None = None) -> dict[str, Any]:
    """Seed 003's three targets judged as the generated alert rules judge them: the share of the assignments
    that ended in 24 h that failed (or died, or were denied) under 5 %, the average queue wait of the attempts of
    the last 15 minutes under 5 s, decision quality over 24 h at least 85 %. ``ok`` is None where nothing ended."""
    ends = _ended(conn, now - FAILURE_WINDOW_S, tenant)
    failed = sum(1 for r in ends if r.detail["end"] != "done")
    waits = [float(r.detail["wait_s"]) for r in recent(conn, ATTEMPT_ENDS, since=now - WAIT_WINDOW_S, tenant=tenant)
             if isinstance(r.detail.get("wait_s"), int | float) and not isinstance(r.detail.get("wait_s"), bool)
             and isinstance(r.detail.get("end"), str)]
    rate = failed / len(ends) if ends else None
    mean_wait = sum(waits) / len(waits) if waits else None
    quality = _quality(ends)

    def judged(name: str, value: float | None, ok: bool | None, target: str, window_s: float, n: int,
               alert: str) -> dict[str, Any]:
        return {"name": name, "value": value, "ok": ok, "target": target, "window_s": window_s, "n": n,
                "alert": alert}

    failure_max, wait_max, quality_min = f.FAILURE_RATE_MAX, f.WAIT_AVG_MAX_S, f.DECISION_QUALITY_MIN
    return {"targets": [
        judged("bus failure rate", rate, None if rate is None else rate < failure_max,
               f"< {failure_max * 100:g} %", FAILURE_WINDOW_S, len(ends), "CogoBusFailureRateHigh"),
        judged("average queue wait", mean_wait, None if mean_wait is None else mean_wait < wait_max,
               f"< {wait_max:g} s", WAIT_WINDOW_S, len(waits), "CogoQueueWaitHigh"),
        judged("decision quality", quality, None if quality is None else quality >= quality_min,
               f">= {quality_min * 100:g} %", FAILURE_WINDOW_S, len(ends), "CogoDecisionQualityLow")]}


def _failures_by_hour(conn: Connection, window_s: float, now: float, tenant: str | None) -> list[dict[str, Any]]:
    """Runs that failed, per clock hour of the window (at most ``MAX_HOURS``, the current one last)."""
    hours = max(1, min(MAX_HOURS, math.ceil(window_s / 3600)))
    first = (math.floor(now / 3600) - hours + 1) * 3600
    stmt = select(runs.c.updated_at).where(runs.c.status == RUN_FAILED, runs.c.updated_at >= first)
    if tenant is not None:
        stmt = stmt.where(runs.c.tenant == tenant)
    counts = [0] * hours
    for (at,) in conn.execute(stmt):
        index = int((at - first) // 3600)
        if 0 <= index < hours:
            counts[index] += 1
    return [{"hour_start": first + 3600 * i, "failed": n} for i, n in enumerate(counts)]


def _gates(conn: Connection, since: float, tenant: str | None) -> list[dict[str, Any]]:
    """The latest gate verdicts, each with the assignment that completed last before it in its run (the work it
    judged, whose artifact the dashboard shows), found through the run's event index."""
    stmt = (select(ie.c.id, ie.c.run_id, ie.c.node_id, ie.c.data, ie.c.created_at)
            .where(ie.c.type == GATE, ie.c.created_at >= since).order_by(ie.c.id.desc()).limit(GATES_SHOWN))
    if tenant is not None:
        stmt = stmt.where(ie.c.run_id.in_(select(runs.c.id).where(runs.c.tenant == tenant)))
    found = []
    for gate in conn.execute(stmt).all():
        data = gate.data if isinstance(gate.data, dict) else {}
        judged = conn.execute(select(ie.c.data).where(ie.c.run_id == gate.run_id, ie.c.id < gate.id,
                                                      ie.c.type == COMPLETED)
                              .order_by(ie.c.id.desc()).limit(1)).scalar()
        assignment_id = judged.get("assignment_id") if isinstance(judged, dict) else None
        found.append({"run_id": gate.run_id, "node": gate.node_id, "passed": data.get("passed"),
                      "value": data.get("value"), "at": gate.created_at,
                      "assignment_id": assignment_id if isinstance(assignment_id, str) else None})
    return found


def spend(conn: Connection, *, tenant: str | None = None) -> dict[str, Any]:
    """Settled cost and tokens by tenant and model since the ledger began (the folded counters)."""
    rows = conn.execute(select(mt.c.name, mt.c.labels, mt.c.value)
                        .where(mt.c.name.in_((f.COST.sample, f.TOKENS.sample)))).all()
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        labels = parse_labels(row.labels)
        who, model = labels.get("tenant", ""), labels.get("model", "")
        if tenant is not None and who != tenant:
            continue
        entry = by.setdefault((who, model), {"tenant": who, "model": model, "cost_usd": 0.0, "tokens": 0})
        if row.name == f.COST.sample:
            entry["cost_usd"] = row.value
        else:
            entry["tokens"] = int(row.value)
    return {"by_tenant_model": sorted(by.values(), key=lambda e: (-e["cost_usd"], -e["tokens"], e["tenant"],
                                                                    e["model"]))}
