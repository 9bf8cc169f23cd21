"""``GET /api/fleet`` over a real ledger: untaken rows per queue with the oldest, what is only scheduled, and
an honest answer when the broker cannot be asked (live consumers are covered by tests/e2e/test_cli_ops.py)."""

from __future__ import annotations

import pytest

from bus.celery_app import TASK_WORK
from coordinator.api.fleet import waiting_queue
from coordinator.timefmt import iso
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, registry_of, settle, submit
from workers.handler import WorkResult

GATED = """
name: gated
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, next: ask}
  ask: {kind: approval, prompt: "Ship it?", timeout_ms: 3600000, approve: done, reject: done, on_timeout: done}
  done: {kind: end}
"""


@pytest.mark.parametrize("service, role, status, queue", [
    ("orchestrator", "decide", "queued", "orchestrator.decide.3"),
    ("t", "work", "queued", "orchestrator.execute.3"),
    ("t", "work", "retry_wait", "orchestrator.execute.3"),
    ("t", "work", "dispatched", "t.work.3")])
def test_an_untaken_row_waits_on_the_queue_its_status_sends_it_to(service, role, status, queue):
    assert waiting_queue(service, role, 3, status) == queue


def queues_of(answer: dict) -> dict[str, dict]:
    return {q["queue"]: q for q in answer["queues"]}


def test_fleet_counts_untaken_rows_per_queue_and_says_when_the_broker_cannot_be_asked(engine):
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={})}, registry=registry_of(GATED))
    client = http(app_of(fleet), make_key(engine, "ops"))
    first = submit(fleet, "gated")
    fleet.clock.now += 5
    submit(fleet, "gated")

    answer = client.get("/api/fleet").json()
    decide = queues_of(answer)["orchestrator.decide.0"]
    assert (decide["waiting"], decide["by_status"], decide["scheduled"]) == (2, {"queued": 2}, 0)
    assert decide["oldest_created_at"] == fleet.clock.now - 5
    assert decide["oldest_created_at_iso"] == iso(fleet.clock.now - 5)
    assert set(queues_of(answer)) >= {"orchestrator.decide.0", "orchestrator.execute.0", "t.work.0"}
    assert queues_of(answer)["t.work.0"]["waiting"] == 0
    # the harness has no broker: nothing is claimed about consumers or depths
    assert answer["broker"]["reachable"] is False and answer["consumers"] == []
    assert all(q["broker_depth"] is None for q in answer["queues"])
    assert answer["api"]["state"] == "up" and answer["checked_at_iso"].endswith("Z")

    # both runs start; the workers' deliveries are lost: their rows wait, dispatched, on the worker queue
    fleet.drain(skip=lambda d: d.task == TASK_WORK)
    work = queues_of(client.get("/api/fleet").json())["t.work.0"]
    assert (work["waiting"], work["by_status"]) == (2, {"dispatched": 2})

    # one run reaches its approval: its timeout is a row due later, scheduled rather than waiting
    fleet.publisher.send([d for d in _redeliver(fleet, first)])
    settle(fleet)
    answer = client.get("/api/fleet").json()
    assert queues_of(answer)["t.work.0"]["waiting"] == 1
    decide = queues_of(answer)["orchestrator.decide.0"]
    assert (decide["waiting"], decide["scheduled"]) == (0, 1)


def test_fleet_is_for_admins_only(engine):
    fleet = Fleet(engine, {}, registry=registry_of(GATED))
    app = app_of(fleet)
    assert http(app).get("/api/fleet").json()["error"]["code"] == "auth.required"
    refused = http(app, make_key(engine, "acme", ["runs:read"])).get("/api/fleet")
    assert refused.status_code == 403


def _redeliver(fleet: Fleet, run_id: str):
    """The work delivery of ``run_id``'s dispatched row, as the reclaimer would re-send it."""
    from sqlalchemy import select

    from bus.outbox import Delivery
    from bus.schema import agent_messages as m

    with fleet.engine.connect() as conn:
        ids = conn.execute(select(m.c.id).where(m.c.run_id == run_id, m.c.status == "dispatched")).scalars().all()
    return [Delivery(TASK_WORK, "t.work.0", message_id) for message_id in ids]
