"""People and the outside world through the API and the SDK (seeds 002 and 004): approvals listed,
approved, rejected, expired; signals; cancellation; and ``explain`` saying what a run waits for."""

from __future__ import annotations

import pytest

from bus.errors import WorkFailed
from coordinator.api.deps import Services
from coordinator.api.server import create_app
from coordinator.client import ApiError, Client
from tests.support.api import http, make_key
from tests.support.harness import Fleet, registry_of, settle, submit, types
from workers.handler import WorkResult

GATEKEEPER = """
name: gatekeeper
start: build
nodes:
  build: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: build, next: ask}
  ask:
    kind: approval
    prompt: "Ship it?"
    timeout_ms: 3600000
    approve: ship
    reject: drop
    on_timeout: escalate
  escalate: {kind: end, output: {outcome: "'escalated'"}}
  ship: {kind: end, output: {outcome: "'shipped'", by: context.ask.by, comment: context.ask.comment}}
  drop: {kind: end, output: {outcome: "'dropped'", by: context.ask.by}}
"""

WAITS = """
name: waits
start: pause
nodes:
  pause: {kind: wait, duration_ms: 30000, next: hear}
  hear: {kind: wait, event: go, output: go, next: done}
  done: {kind: end, output: {go: context.go}}
"""


@pytest.fixture
def world(engine):
    """A fleet, the API over the same ledger and the SDK client talking to it."""
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"ok": True})},
                  registry=registry_of(GATEKEEPER, WAITS))
    published: list[tuple[str, dict]] = []
    fleet.brain.notify = lambda channel, message: published.append((channel, message))
    app = create_app(Services(engine=engine, publisher=fleet.publisher, registry=fleet.registry,
                              settings=fleet.settings))
    client = Client("http://testserver")
    client._http = http(app, make_key(engine, "ops"))
    yield fleet, client, published
    client.close()


def test_approval_waits_is_listed_and_resumes_on_approve(world):
    fleet, client, published = world
    run_id = submit(fleet, "gatekeeper", tenant="acme")
    settle(fleet)
    assert client.run(run_id)["status"] == "waiting"
    [pending] = client.approvals(tenant="acme")
    assert (pending["run_id"], pending["node_id"], pending["status"], pending["prompt"]) == (
        run_id, "ask", "pending", "Ship it?")
    assert client.approvals(tenant="someone-else") == []
    [(channel, message)] = published
    assert channel == "cogo:approvals" and message["approval_id"] == pending["id"]
    why = client.explain(run_id)
    assert why["waiting_for"][0]["kind"] == "approval" and why["waiting_for"][0]["approval_id"] == pending["id"]
    waiting = why["waiting_for"][0]
    assert waiting["since"] == fleet.clock() and waiting["expires_at"] == fleet.clock() + 3600

    answer = client.approve(pending["id"], comment="lgtm")
    assert answer["status"] == "accepted" and answer["decision"] == "approve"
    with pytest.raises(ApiError) as twice:
        client.reject(pending["id"], reason="too late")
    assert twice.value.code == "approval.not_pending"
    settle(fleet)
    output = client.run(run_id)["output"]
    assert (output["outcome"], output["comment"]) == ("shipped", "lgtm")
    [decided] = client.approvals(status="approved")
    assert decided["decided_by"] and decided["decided_by"] == output["by"]  # who: the API decides, not the body
    assert decided["decided_at_iso"].endswith("Z") and decided["requested_at_iso"] == pending["requested_at_iso"]
    with pytest.raises(ApiError) as late:
        client.approve(pending["id"])
    assert late.value.code == "approval.not_pending"


def test_reject_takes_the_reject_route(world):
    fleet, client, _ = world
    run_id = submit(fleet, "gatekeeper")
    settle(fleet)
    [pending] = client.approvals()
    client.reject(pending["id"], reason="not now")
    settle(fleet)
    assert client.run(run_id)["output"]["outcome"] == "dropped"
    assert client.approvals(status="rejected")[0]["comment"] == "not now"
    assert types(fleet, run_id, "decision.approval") == ["decision.approval.request", "decision.approval.resolve"]


def test_an_unanswered_approval_escalates_at_its_timeout(world):
    fleet, client, _ = world
    run_id = submit(fleet, "gatekeeper")
    fleet.drain()  # the clock runs on to the approval's timeout
    assert client.run(run_id)["output"] == {"outcome": "escalated"}
    assert client.approvals(status="expired")[0]["run_id"] == run_id


def test_unknown_approval_is_404(world):
    _, client, _ = world
    from bus.errors import NotFound
    with pytest.raises(NotFound):
        client.approve("00000000-0000-4000-8000-00000000dead")


def test_signal_resumes_a_wait_and_a_finished_run_refuses_more(world):
    fleet, client, _ = world
    run_id = submit(fleet, "waits")
    settle(fleet)
    why = client.explain(run_id)["waiting_for"][0]
    assert (why["kind"], why["fire_at"]) == ("timer", fleet.clock() + 30)
    fleet.drain()
    assert client.explain(run_id)["waiting_for"][0]["event"] == "go"
    client.signal(run_id, "go", {"by": "ops"})
    settle(fleet)
    assert client.run(run_id)["output"] == {"go": {"by": "ops"}}
    with pytest.raises(ApiError) as ended:
        client.signal(run_id, "go")
    assert ended.value.code == "run.terminal"


def test_cancel_through_the_api_cancels_the_run_and_its_approval(world):
    fleet, client, _ = world
    run_id = submit(fleet, "gatekeeper")
    settle(fleet)
    client.cancel(run_id, reason="operator")
    settle(fleet)
    run = client.run(run_id)
    assert run["status"] == "cancelled" and run["error"]["message"] == "operator"
    assert client.approvals(status="cancelled")[0]["run_id"] == run_id
    assert client.explain(run_id)["waiting_for"] == []


FANOUT = """
name: fan
start: split
nodes:
  split: {kind: foreach, items: input.items, body: work, join: merge}
  work: {kind: task, route: {service: t, role: flaky}, agent: {agent_id: w}, input: {x: item},
         retry: {maximum_attempts: 3, initial_interval_ms: 5000, jitter: 0.0}, next: merge}
  merge: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def test_explain_shows_a_join_at_k_of_n_with_the_missing_branches_and_their_retry_backoff(engine):
    def flaky(ctx, payload):
        if payload["x"] in (1, 3):
            raise WorkFailed("busy", retryable=True)
        return WorkResult(output={})

    fleet = Fleet(engine, {("t", "flaky"): flaky}, registry=registry_of(FANOUT))
    app = create_app(Services(engine=engine, publisher=fleet.publisher, registry=fleet.registry,
                              settings=fleet.settings))
    client = Client("http://testserver")
    client._http = http(app, make_key(engine, "ops"))
    run_id = submit(fleet, "fan", {"items": [0, 1, 2, 3, 4]})
    settle(fleet)
    [join] = client.explain(run_id)["waiting_for"]
    assert (join["kind"], join["arrived"], join["expected"], join["missing_count"]) == ("join", 3, 5, 2)
    assert [b["branch_index"] for b in join["missing"]] == [1, 3]
    retry = join["missing"][0]["waiting_for"][0]
    assert (retry["kind"], retry["assignment_status"], retry["attempt"], retry["max_attempts"]) == (
        "task", "retry_wait", 1, 3)
    assert retry["retry_at"] == fleet.clock() + 5
    assert "retry backoff until" in retry["summary"]
    assert "3 of 5 branches arrived" in client.explain(run_id)["summary"]
    client.close()
