"""The metrics server reads real runs from the ledger."""

from __future__ import annotations

from coordinator.metrics import create_app, percentile
from tests.integration.test_minimal_flow import echo, submit
from tests.support.api import http, make_key
from tests.support.harness import Fleet


def test_percentile():
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.9) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 0.5) == 50.0
    assert percentile([float(i) for i in range(1, 101)], 0.9) == 90.0


def test_metrics_report_runs_bus_rows_and_latency(engine):
    fleet = Fleet(engine, {("rag", "embed"): echo})
    for _ in range(3):
        submit(fleet)
    fleet.drain()
    client = http(create_app(engine, fleet.settings), make_key(engine, "ops", ["admin"]))
    text = client.get("/metrics").text
    assert 'cogo_runs{status="completed",workflow="single-task"} 3.0' in text
    assert 'cogo_bus_events_total{kind="execute_done"} 3.0' in text
    latency = client.get("/api/metrics/bus/latency", params={"window_s": 2592000}).json()
    assert latency["assignments"] == 3 and latency["queue_wait_ms"]["n"] == 3
    summary = client.get("/api/metrics/workflows/summary", params={"window_s": 2592000}).json()
    assert summary["runs"]["single-task"]["completed"] == 3
    assert summary["decision_quality"] == 1.0
