"""Seed 000, Phase 9: one e2e test per action type, each asserting its dispatch, execution and completion events.

cogo's action types are what a workflow node does outside the brain's own bookkeeping: a ``task`` on each
route a worker serves (``codegen.generate``, an LLM call; ``code.build-test``, sandboxed code; ``rag.embed``;
``kg.build``), and the node kinds that act on the world or wait for it — ``notify`` (a Redis publish),
``approval`` (a person, over HTTP), ``subworkflow`` (a child run) and ``wait`` (a durable timer, or an external
signal). Control flow (gate, parallel, foreach, join, end) executes nothing and is covered elsewhere. Each
test runs a one-action workflow (``tests/e2e/workflows/flow-*.yaml``) on one real fleet, with a PostgreSQL
ledger and a Redis of the module's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from rich.console import Console
from sqlalchemy import select

from bus import ledger
from bus.db import make_engine
from bus.schema import agent_messages
from coordinator.client import Client
from coordinator.definitions import Node
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.e2e.test_user_flows import (
    UNHURRIED,
    WORKERS,
    Channels,
    assert_ledger_held_for,
    assignments,
    audit,
    bearer,
    new_key,
)
from tests.support.invariants import assert_ledger_held
from tests.support.owned import OwnedPostgres, OwnedRedis

pytestmark = pytest.mark.e2e

TENANT = "acme"
DOCUMENTS = [{"id": "d1", "text": "The Executor Dispatcher admits work before Redis delivers it."}]
EDITS = [{"path": "add.py", "action": "create", "content": "def add(a, b):\n    return a + b\n"},
         {"path": "test_add.py", "action": "create",
          "content": "from add import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"}]

START = ["decision.routing.start", "operation.workflow.initialize", "operation.tokens.create"]
"""The run starts and its token enters the action node ``act``."""
ONWARD = ["decision.routing.evaluate_transition", "decision.routing.transition_matched"]
"""``act`` is left by its one transition."""
END = ["operation.tokens.create", "operation.tokens.update_status", "decision.workflow.complete",
       "operation.workflow.complete"]
"""The end node is entered and the run completes."""


@dataclass(frozen=True)
class Action:
    """The introspection events of one action type, in the order the run writes them."""

    dispatch: tuple[str, ...]
    execution: tuple[str, ...]
    completion: tuple[str, ...]

    def trace(self, *, onward: bool = True) -> list[str]:
        """The whole run of a one-action workflow: start, this action, the end."""
        return [*START, *self.dispatch, *self.execution, *self.completion, *(ONWARD if onward else ()), *END]


TASK = Action(dispatch=("decision.task.dispatch", "dispatch.token.enqueued", "dispatch.assignment.admitted"),
              execution=("dispatch.assignment.started",),
              completion=("dispatch.assignment.completed", "decision.assignment.settle", "dispatch.assignment.settled",
                          "decision.task.completed", "operation.tokens.update_status", "operation.context.set"))
NOTIFY = Action(dispatch=("decision.notify.publish",), execution=("dispatch.notify.queued",),
                completion=("operation.tokens.update_status",))
APPROVAL = Action(dispatch=("decision.approval.request", "operation.tokens.mark_waiting", "operation.approval.create",
                            "dispatch.notify.queued", "operation.alarm.schedule"),
                  execution=(),  # a person decides, over HTTP: no event until the decision arrives
                  completion=("decision.approval.resolve", "operation.approval.resolve",
                              "operation.tokens.update_status", "operation.context.set"))
SUBWORKFLOW = Action(dispatch=("decision.subworkflow.start", "operation.tokens.mark_waiting",
                               "operation.subworkflow.create"),
                     execution=(),  # the child run's own events: see CHILD
                     completion=("decision.subworkflow.completed", "operation.tokens.update_status",
                                 "operation.context.set"))
TIMER = Action(dispatch=("decision.wait.timer", "operation.tokens.mark_waiting", "operation.alarm.schedule"),
               execution=(),  # the timer row fires: checked in the ledger
               completion=("decision.wait.resume", "operation.tokens.update_status"))
SIGNAL = Action(dispatch=("decision.wait.event", "operation.tokens.mark_waiting"),
                execution=(),  # the signal arrives over HTTP
                completion=("decision.wait.resume", "operation.tokens.update_status", "operation.context.set"))

CHILD = ["decision.routing.start", "operation.workflow.initialize", "operation.tokens.create", *TASK.dispatch,
         *TASK.execution, *TASK.completion, *ONWARD, *END]
"""The child run of ``flow-subworkflow``: the built-in single-task, one rag.embed assignment."""


@dataclass
class Actions:
    """One fleet for the module: API, brain, dispatcher, reclaimer and every worker, on a PostgreSQL cluster and a
    Redis of the module's own."""

    fleet: Fleet
    broker_url: str
    ledger_url: str

    def client(self) -> Client:
        return Client(self.fleet.api_url, api_key=self.fleet.api_key, timeout_s=30.0)

    def types(self, run_id: str) -> list[str]:
        """Every introspection event type of the run, in order."""
        with self.client() as client:
            return [e["type"] for e in client.events(run_id)]

    def events(self, run_id: str, type: str) -> list[dict[str, Any]]:
        with self.client() as client:
            return client.events(run_id, type=type)


@pytest.fixture(scope="module")
def actions(tmp_path_factory) -> Iterator[Actions]:
    root = tmp_path_factory.mktemp("action-types")
    postgres = OwnedPostgres()
    broker = OwnedRedis(root / "broker")
    try:
        postgres.start()
        broker.start()
        settings = fleet_settings(root, broker_url=broker.url, database_url=postgres.url, **UNHURRIED)
        with Fleet(settings, only=[*CORE, *WORKERS], processes=TABLE, free_ports=True,
                   env={"PYTHONUNBUFFERED": "1"}, console=Console(quiet=True), show_logs=False) as fleet:
            yield Actions(fleet, broker.url, fleet.settings.database_url)
    finally:
        broker.stop()
        postgres.destroy()


def submit(actions: Actions, intent: str, payload: dict[str, Any]) -> str:
    with actions.client() as client:
        return client.submit(intent, tenant=TENANT, payload=payload)


def finished(actions: Actions, run_id: str) -> dict[str, Any]:
    with actions.client() as client:
        run = client.wait(run_id, timeout_s=90)
    assert run["status"] == "completed", run
    return run


def waiting(actions: Actions, run_id: str) -> None:
    with actions.client() as client:
        client.wait_for_event(run_id, "operation.tokens.mark_waiting", timeout_s=60)


# -- worker routes: task nodes --------------------------------------------------------------------------

ROUTES = [
    pytest.param("flow-codegen", {"spec": "a function add(a, b) that returns a + b"}, "codegen.generate.0",
                 "edits_path", id="codegen.generate"),
    pytest.param("flow-build-test", {"edits": EDITS}, "code.build-test.0", "report_path", id="code.build-test"),
    pytest.param("flow-rag-embed", {"documents": DOCUMENTS}, "rag.embed.0", "index_path", id="rag.embed"),
    pytest.param("flow-kg-build", {"documents": DOCUMENTS}, "kg.build.0", "graph_path", id="kg.build"),
]
"""One case per route a worker serves: ``(intent, payload, queue, output key of the worker's artifact)``."""
ACTING_KINDS = {"task", "notify", "approval", "subworkflow", "wait"}
"""The node kinds that execute something, each tested here; the others only route (``CONTROL_KINDS``)."""
CONTROL_KINDS = {"gate", "parallel", "foreach", "join", "end"}


def test_every_action_type_has_its_test():
    """A route added to the process table, or a node kind added to the definitions, needs its test here."""
    served = {f"{service}.{role}" for p in PROCESSES for service, role in p.routes if service != "orchestrator"}
    assert served == {case.id for case in ROUTES}
    kinds = {t.model_fields["kind"].annotation.__args__[0] for t in get_args(get_args(Node)[0])}
    assert kinds == ACTING_KINDS | CONTROL_KINDS


@pytest.mark.parametrize(("intent", "payload", "queue", "artifact"), ROUTES)
def test_a_worker_route_is_dispatched_executed_by_its_worker_and_completed(actions, intent, payload, queue,
                                                                            artifact):
    run = finished(actions, run_id := submit(actions, intent, payload))
    assert actions.types(run_id) == TASK.trace()
    with actions.client() as client:
        [(node, assignment_id, sent_to)] = assignments(client, run_id)
        assert (node, sent_to) == ("act", queue)
        assert audit(client, run_id) == {assignment_id: ["execute_enqueued", "execute_done"]}
        bus = {b["kind"]: b for b in client.bus_events(run_id)}
    [dispatched] = actions.events(run_id, "decision.task.dispatch")
    assert dispatched["data"]["route"] == queue.rsplit(".", 1)[0]
    for kind in ("admitted", "started", "completed"):
        [event] = actions.events(run_id, f"dispatch.assignment.{kind}")
        assert (event["data"]["assignment_id"], event["data"]["attempt"]) == (assignment_id, 1), kind
    [completed] = actions.events(run_id, "dispatch.assignment.completed")
    assert completed["data"]["usage"] == bus["execute_done"]["detail"]["usage"]
    # the worker executed this very assignment: its artifact is under the assignment's id
    path = Path(run["output"][artifact])
    assert path.is_file() and assignment_id in path.parts
    assert_ledger_held_for(actions.ledger_url, run_id)


# -- node kinds that act without a worker ---------------------------------------------------------------

def test_notify_is_dispatched_published_on_its_channel_and_completed(actions):
    with Channels(actions.broker_url, "cogo:e2e-notify") as channels:
        run_id = submit(actions, "flow-notify", {"note": "build 42 is green"})
        run = finished(actions, run_id)
        published = channels.wait_for(lambda _, m: m["run_id"] == run_id, what="the notification")
    assert actions.types(run_id) == NOTIFY.trace()
    assert published == {"run_id": run_id, "node": "act", "message": {"note": "build 42 is green"}}
    [decided] = actions.events(run_id, "decision.notify.publish")
    [queued] = actions.events(run_id, "dispatch.notify.queued")
    assert decided["data"]["channel"] == queued["data"]["channel"] == "cogo:e2e-notify"
    assert run["output"] == {"note": "build 42 is green"}
    assert_ledger_held_for(actions.ledger_url, run_id)


def approve_over_http(actions: Actions, approval_id: str) -> dict[str, Any]:
    """Approve with a key of the tenant's that holds only ``approvals:decide``."""
    decider = new_key(actions.fleet, ["approvals:decide"], "on-call")
    decided = httpx.post(f"{actions.fleet.api_url}/api/approvals/{approval_id}/approve", headers=bearer(decider),
                         json={"comment": "go"}, timeout=30)
    assert decided.status_code == 202, decided.text
    return decided.json()


def test_approval_is_requested_on_redis_decided_over_http_and_completed(actions):
    with Channels(actions.broker_url, "cogo:approvals") as channels:
        run_id = submit(actions, "flow-approval", {})
        request = channels.wait_for(lambda _, m: m["run_id"] == run_id, what="the approval request")
    waiting(actions, run_id)
    assert actions.types(run_id) == [*START, *APPROVAL.dispatch]
    assert approve_over_http(actions, request["approval_id"])["by"] == "key:on-call"
    run = finished(actions, run_id)
    assert actions.types(run_id) == APPROVAL.trace(onward=False)  # the decision routes: no transition to evaluate
    [resolved] = actions.events(run_id, "decision.approval.resolve")
    assert (resolved["data"]["approval_id"], resolved["data"]["approved"], resolved["data"]["to"]) == \
        (request["approval_id"], True, "approved")
    assert run["output"] == {"decision": "approved", "answer": {"approved": True, "by": "key:on-call",
                                                                "comment": "go"}}
    assert_ledger_held_for(actions.ledger_url, run_id)


def test_subworkflow_is_dispatched_executed_as_a_child_run_and_completed(actions):
    run = finished(actions, run_id := submit(actions, "flow-subworkflow", {"documents": DOCUMENTS}))
    assert actions.types(run_id) == SUBWORKFLOW.trace()
    [started] = actions.events(run_id, "decision.subworkflow.start")
    child_id = started["data"]["child_run_id"]
    [done] = actions.events(run_id, "decision.subworkflow.completed")
    assert done["data"]["child_run_id"] == child_id
    with actions.client() as client:
        child = client.run(child_id)
        [(_, assignment_id, queue)] = assignments(client, child_id)
        assert audit(client, child_id) == {assignment_id: ["execute_enqueued", "execute_done"]}
    assert (child["parent_run_id"], child["root_run_id"], child["depth"], child["status"]) == \
        (run_id, run_id, 1, "completed")
    assert actions.types(child_id) == CHILD and queue == "rag.embed.0"
    assert run["output"] == child["output"] and run["output"]["result"]["documents"] == 1
    assert_ledger_held_for(actions.ledger_url, run_id)


def test_a_timer_is_scheduled_fires_as_a_ledger_row_and_resumes_the_run(actions):
    finished(actions, run_id := submit(actions, "flow-wait-timer", {}))
    assert actions.types(run_id) == TIMER.trace()
    [scheduled] = actions.events(run_id, "operation.alarm.schedule")
    engine = make_engine(actions.ledger_url)
    try:
        with engine.connect() as conn:
            timers = conn.execute(select(agent_messages.c.status, agent_messages.c.retry_at, agent_messages.c.payload)
                                  .where(agent_messages.c.run_id == run_id, agent_messages.c.kind == "timer")).all()
    finally:
        engine.dispose()
    # the durable timer was a decide row due at fire_at, and the brain applied it
    assert [(t.status, t.retry_at, t.payload["purpose"]) for t in timers] == \
        [(ledger.DONE, scheduled["data"]["fire_at"], "wait")]
    assert_ledger_held_for(actions.ledger_url, run_id)


def test_a_signal_wait_is_dispatched_resumed_by_the_signal_and_completed(actions):
    run_id = submit(actions, "flow-wait-signal", {})
    waiting(actions, run_id)
    assert actions.types(run_id) == [*START, *SIGNAL.dispatch]
    sent = httpx.post(f"{actions.fleet.api_url}/api/runs/{run_id}/signals/go", headers=bearer(actions.fleet.api_key),
                      json={"data": {"window": "open"}}, timeout=30)
    assert sent.status_code == 202, sent.text
    run = finished(actions, run_id)
    assert actions.types(run_id) == SIGNAL.trace()
    [resumed] = actions.events(run_id, "decision.wait.resume")
    assert resumed["data"]["signal"] == "go"
    assert run["output"] == {"window": "open"}
    assert_ledger_held_for(actions.ledger_url, run_id)


def test_a_run_that_ended_leaves_no_timer_queued(actions):
    with Channels(actions.broker_url, "cogo:approvals") as channels:
        run_id = submit(actions, "flow-approval", {})
        request = channels.wait_for(lambda _, m: m["run_id"] == run_id, what="the approval request")
    approve_over_http(actions, request["approval_id"])
    finished(actions, run_id)
    engine = make_engine(actions.ledger_url)
    try:
        assert_ledger_held(engine, roots=[run_id])
    finally:
        engine.dispose()

