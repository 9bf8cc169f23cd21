"""The metrics of a real fleet (separate processes, a real Redis): ``cogo-metrics-server`` folds the audit log in
its own thread, its ``/metrics`` (scraped with a ``metrics:read`` key, as Prometheus does) counts the runs the fleet
ran, asks the broker for queue depths, and passes ``promtool check metrics``; the API serves the same cards the
dashboard reads."""

from __future__ import annotations

import httpx
import pytest
from rich.console import Console

from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.prometheus import check_metrics, samples
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
RUNS = 3


def test_a_real_fleet_is_counted_by_its_metrics_server(tmp_path, e2e_env, owned_redis):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url)
    with Fleet(settings, only=[*CORE, "cogo-rag-embed", "cogo-metrics-server"], processes=TABLE, free_ports=True,
               env=e2e_env, console=Console(quiet=True), show_logs=False) as fleet:
        headers = {"Authorization": f"Bearer {fleet.api_key}"}
        created = httpx.post(f"{fleet.api_url}/api/keys", headers=headers, timeout=30,
                             json={"tenant": "ops", "scopes": ["metrics:read"], "name": "prometheus"})
        assert created.status_code == 201, created.text
        prometheus = created.json()["key"]
        with Client(fleet.api_url, api_key=fleet.api_key) as client:
            run_ids = [client.submit("embed", tenant="acme",
                                     payload={"documents": [{"id": f"d{i}", "text": "Cogo Runs Here"}]})
                       for i in range(RUNS)]
            assert [client.wait(r, timeout_s=60)["status"] for r in run_ids] == ["completed"] * RUNS

        def scrape() -> str:
            answer = httpx.get(f"{fleet.metrics_url}/metrics", headers={"Authorization": f"Bearer {prometheus}"},
                               timeout=30)
            assert answer.status_code == 200, answer.text
            return answer.text

        done = {"route": "rag.embed", "outcome": "done"}
        key = tuple(sorted(done.items()))
        text = wait_until(lambda: (t := scrape()) and samples(t).get("cogo_assignments_total", {}).get(key) == RUNS
                          and t, timeout=30, message="the metrics server to fold the runs")
        found = samples(text)
        assert found["cogo_queue_wait_seconds_count"][(("route", "rag.embed"),)] == RUNS
        assert found["cogo_ingress_latency_seconds_count"][()] == RUNS
        assert (("route", "rag.embed"),) in found["cogo_queue_depth"]  # the broker was asked
        assert found["cogo_broker_up"] == {(): 1.0}
        assert found["cogo_agents_live"][(("route", "rag.embed"),)] == 1
        assert found["cogo_metrics_fold_last_success_timestamp_seconds"][()] > 0
        cards = httpx.get(f"{fleet.api_url}/api/metrics/bus/latency", headers=headers, timeout=30).json()
        assert cards["routes"]["rag.embed"]["queue_wait_ms"]["n"] == RUNS
        summary = httpx.get(f"{fleet.api_url}/api/metrics/workflows/summary", headers=headers, timeout=30).json()
        assert summary["decision_quality"] == 1.0 and summary["decision_quality_n"] == RUNS
    check_metrics(text)
