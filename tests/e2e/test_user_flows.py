"""The user's flows on a real fleet: indexing, codegen → build-test → gate with one feedback loop, upgrade."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from rich.console import Console

from bus.db import make_engine
from coordinator.client import Client
from coordinator.definitions import BUILTIN_DIR
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.invariants import assert_ledger_held
from tests.support.model_server import ModelServer, serving
from tests.support.owned import OwnedRedis
from tests.support.waiting import wait_until
from workers.llm import render_files

pytestmark = pytest.mark.e2e

WORKERS = ["cogo-codegen-service", "cogo-build-test-worker", "cogo-rag-embed", "cogo-kg-builder"]
TENANT = "acme"
LLM_MODEL = "gpt-4o-mini"
LLM_KEY = "sk-e2e-user-flows"

# What the model server writes: a module whose tests fail (1 of 2) until it is given build-test's feedback.
TESTS = "from add import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n\n\ndef test_sum():\n" \
        "    assert add(2, 3) == 5\n"
FAILING = {"add.py": "def add(a, b):\n    return a - b\n", "test_add.py": TESTS}
PASSING = {"add.py": "def add(a, b):\n    return a + b\n", "test_add.py": TESTS}
FAILED_TEST = "FAILED test_add.py::test_sum"
"""pytest's line for the failing test: in codegen's prompt only when the gate sent build-test's feedback back."""


def answer(messages: list[dict[str, str]]) -> str:
    """The model: failing code, until the prompt shows it the test that failed; then the fix."""
    return render_files(PASSING if FAILED_TEST in messages[-1]["content"] else FAILING)


# -- event sequences ------------------------------------------------------------------------------------

def task_step(node: str) -> list[tuple[str, str | None]]:
    """One task node's assignment: decided, enqueued, admitted, started, completed (worker), its spend settled and
    its outcome applied (brain)."""
    return [("decision.task.dispatch", node), ("dispatch.token.enqueued", node), ("dispatch.assignment.admitted", node),
            ("dispatch.assignment.started", node), ("dispatch.assignment.completed", node),
            ("decision.assignment.settle", None), ("dispatch.assignment.settled", None),
            ("decision.task.completed", node)]


def onward(node: str) -> list[tuple[str, str | None]]:
    """Leaving ``node`` by its one unconditional transition."""
    return [("decision.routing.evaluate_transition", node), ("decision.routing.transition_matched", node)]


START = [("decision.routing.start", None)]
COMPLETE = [("decision.workflow.complete", None)]

INDEXING = [*START, *task_step("embed"), *onward("embed"), *task_step("graph"), *onward("graph"), *COMPLETE]

BUILD_AND_GATE = [*task_step("generate"), *onward("generate"), *task_step("test"), *onward("test"),
                  ("decision.gate.evaluate", "gate")]
CODEGEN_ONE_LOOP = [*START, *BUILD_AND_GATE, *BUILD_AND_GATE, ("decision.notify.publish", "promote"),
                    ("dispatch.notify.queued", None), *onward("promote"), *COMPLETE]

UPGRADE_UNTIL_ASKED = [*START, *task_step("propose"), *onward("propose"), *task_step("evaluate"),
                       *onward("evaluate"), ("decision.gate.evaluate", "check"),
                       ("decision.approval.request", "approve"), ("dispatch.notify.queued", None)]
UPGRADE_APPROVED = [*UPGRADE_UNTIL_ASKED, ("decision.approval.resolve", "approve"),
                    ("decision.notify.publish", "promote"), ("dispatch.notify.queued", None), *onward("promote"),
                    *COMPLETE]


def trace(client: Client, run_id: str) -> list[tuple[str, str | None]]:
    """The run's ``decision.*`` and ``dispatch.*`` introspection events as ``(type, node_id)``, in order."""
    return [(e["type"], e["node_id"]) for e in client.events(run_id)
            if e["type"].startswith(("decision.", "dispatch."))]


def assignments(client: Client, run_id: str) -> list[tuple[str, str, str]]:
    """``(node_id, assignment_id, queue)`` of every assignment the run enqueued, in order."""
    return [(e["node_id"], e["data"]["assignment_id"], e["data"]["queue"])
            for e in client.events(run_id, type="dispatch.token.enqueued")]


def audit(client: Client, run_id: str) -> dict[str, list[str]]:
    """The ``bus_events`` kinds of each of the run's messages, in order."""
    kinds: dict[str, list[str]] = {}
    for row in client.bus_events(run_id):
        kinds.setdefault(row["message_id"], []).append(row["kind"])
    return kinds


def assert_each_assignment_ran_once(client: Client, run_id: str, expected: list[tuple[str, str]]) -> None:
    """Every assignment went ``execute_enqueued → execute_done`` on its queue, in ``(node, queue)`` order, and the
    dispatcher's and worker's events name the assignment the brain enqueued."""
    enqueued = assignments(client, run_id)
    assert [(node, queue) for node, _, queue in enqueued] == expected
    assert audit(client, run_id) == {aid: ["execute_enqueued", "execute_done"] for _, aid, _ in enqueued}
    for kind in ("admitted", "started", "completed"):
        named = [e["data"]["assignment_id"] for e in client.events(run_id, type=f"dispatch.assignment.{kind}")]
        assert named == [aid for _, aid, _ in enqueued], kind


def assert_ledger_held_for(ledger_url: str, run_id: str) -> None:
    """The shared ledger invariants hold for the run's tree."""
    engine = make_engine(ledger_url)
    try:
        assert_ledger_held(engine, roots=[run_id])
    finally:
        engine.dispose()


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(fleet: Fleet, scopes: list[str], name: str) -> str:
    """A new API key of the tenant's with ``scopes``, made over HTTP with the fleet's admin key."""
    made = httpx.post(f"{fleet.api_url}/api/keys", headers=bearer(fleet.api_key), timeout=30,
                      json={"tenant": TENANT, "scopes": scopes, "name": name})
    assert made.status_code == 201, made.text
    return made.json()["key"]


# -- Redis pub/sub --------------------------------------------------------------------------------------

class Channels:
    """A subscription to Redis channels, made before the run starts (pub/sub keeps nothing for late comers)."""

    def __init__(self, url: str, *channels: str):
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(*channels)
        self.messages: list[tuple[str, Any]] = []
        confirmed: list[str] = []

        def subscribed() -> bool:
            while (msg := self._pubsub.get_message(timeout=0.1)) is not None:
                if msg["type"] == "subscribe":
                    confirmed.append(msg["channel"].decode())
            return set(confirmed) == set(channels)

        wait_until(subscribed, timeout=30, message=f"the subscription to {channels}")

    def wait_for(self, matches: Callable[[str, Any], bool], *, what: str, timeout: float = 60) -> Any:
        """The first message published so far (or until ``timeout``) for which ``matches(channel, data)``."""
        def found() -> Any:
            while (msg := self._pubsub.get_message(timeout=0.1)) is not None:
                if msg["type"] == "message":
                    self.messages.append((msg["channel"].decode(), json.loads(msg["data"])))
            return next((data for channel, data in self.messages if matches(channel, data)), None)

        return wait_until(found, timeout=timeout, message=f"{what} (seen: {self.messages})")

    def __enter__(self) -> Channels:
        return self

    def __exit__(self, *exc) -> None:
        self._pubsub.close()
        self._client.close()


# -- the fleet --------------------------------------------------------------------------------------------

LLM_FLOW = "flow-codegen-llm"
UNHURRIED = {"lease_s": 30.0, "stale_s": 15.0}
"""Lease and reclaim timings for a fleet whose tests assert exact traces: nothing here tests the reclaimer, so a
worker slowed by a busy machine must not have its assignment reclaimed or retried (an extra ``reclaimed`` row)."""


def llm_workflows(directory: Path) -> Path:
    """A workflows dir holding the built-in codegen-build-test flow, unchanged but for its name and the model its
    codegen step asks for: a step asking for ``cogo-local`` is answered by the local model whatever
    ``COGO_LLM_URL`` says (``workers.llm.model_for``), so the built-in flow never reaches the model server."""
    raw = yaml.safe_load((BUILTIN_DIR / "codegen-build-test.yaml").read_text(encoding="utf-8"))
    raw["name"] = LLM_FLOW
    raw["nodes"]["generate"]["agent"]["model"] = LLM_MODEL
    directory.mkdir(parents=True)
    (directory / f"{LLM_FLOW}.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return directory


@dataclass
class Flows:
    """One fleet for the module: the API, brain, dispatcher, reclaimer and every worker, on a Redis of its own,
    the default SQLite ledger, and a model server that its codegen worker talks to."""

    fleet: Fleet
    model: ModelServer
    broker_url: str
    ledger_url: str

    def client(self) -> Client:
        return Client(self.fleet.api_url, api_key=self.fleet.api_key, timeout_s=30.0)


@pytest.fixture(scope="module")
def flows(tmp_path_factory) -> Iterator[Flows]:
    root = tmp_path_factory.mktemp("user-flows")
    broker = OwnedRedis(root / "broker").start()
    try:
        with serving(answer, model=LLM_MODEL) as model:
            settings = fleet_settings(root, broker_url=broker.url, workflows_dir=llm_workflows(root / "workflows"),
                                      llm_url=model.url, llm_api_key=LLM_KEY, **UNHURRIED)
            with Fleet(settings, only=[*CORE, *WORKERS], processes=TABLE, free_ports=True,
                       env={"PYTHONUNBUFFERED": "1"}, console=Console(quiet=True), show_logs=False) as fleet:
                yield Flows(fleet, model, broker.url, fleet.settings.database_url)
    finally:
        broker.stop()


# -- the flows --------------------------------------------------------------------------------------------

DOCUMENTS = [
    {"id": "d1", "text": "Redis carries every message of the fleet. The Executor Dispatcher admits work before "
                         "Redis delivers it."},
    {"id": "d2", "text": "The Orchestrator Brain plans each step, and the Executor Dispatcher admits what it plans."},
]


def test_indexing_embeds_the_documents_then_builds_the_graph_from_the_index(flows):
    with flows.client() as client:
        run_id = client.submit("index", tenant=TENANT, payload={"documents": DOCUMENTS})
        run = client.wait(run_id, timeout_s=90)
        assert run["status"] == "completed", run
        assert trace(client, run_id) == INDEXING
        assert_each_assignment_ran_once(client, run_id, [("embed", "rag.embed.0"), ("graph", "kg.build.0")])
    out = run["output"]
    assert (out["documents"], out["chunks"]) == (2, 2)
    # kg-build saw the documents only through rag-embed's index: its graph is theirs
    graph = json.loads(Path(out["graph_path"]).read_text(encoding="utf-8"))
    assert {n["id"]: n["chunks"] for n in graph["nodes"]} == {"Redis": 1, "Executor Dispatcher": 2,
                                                              "Orchestrator Brain": 1}
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {("Executor Dispatcher", "Redis"),
                                                                     ("Executor Dispatcher", "Orchestrator Brain")}
    assert (out["nodes"], out["edges"]) == (3, 2)
    assert_ledger_held_for(flows.ledger_url, run_id)


def test_codegen_fails_its_gate_once_loops_back_with_the_feedback_and_then_passes(flows):
    before = len(flows.model.chats())
    with flows.client() as client:
        run_id = client.submit(LLM_FLOW, tenant=TENANT,
                               payload={"spec": "a function add(a, b) that returns the sum of a and b"})
        run = client.wait(run_id, timeout_s=120)
        assert run["status"] == "completed", run
        assert trace(client, run_id) == CODEGEN_ONE_LOOP
        gates = [(e["data"]["passed"], e["data"]["value"], e["data"]["to"])
                 for e in client.events(run_id, type="decision.gate.evaluate")]
        assert gates == [(False, 0.5, "generate"), (True, 1.0, "promote")]
        # the loop re-entered codegen and build-test: a second iteration of each node
        created = client.events(run_id, type="operation.tokens.create")
        iterations = [(e["node_id"], e["data"]["iteration"]) for e in created if e["node_id"] in ("generate", "test")]
        assert iterations == [("generate", 0), ("test", 0), ("generate", 1), ("test", 1)]
        assert_each_assignment_ran_once(client, run_id, [("generate", "codegen.generate.0"),
                                                         ("test", "code.build-test.0")] * 2)
        usage = [e["data"]["usage"] for e in client.events(run_id, type="decision.task.completed")]
    chats = flows.model.chats()[before:]
    assert [c["model"] for c in chats] == [LLM_MODEL, LLM_MODEL]
    assert {r["headers"]["Authorization"] for r in flows.model.requests[before:]} == {f"Bearer {LLM_KEY}"}
    first, second = (c["messages"][-1]["content"] for c in chats)
    # build-test's report of the failing test reached the model through the gate's loop, and only then
    assert FAILED_TEST not in first and FAILED_TEST in second
    out = run["output"]
    assert (out["promoted"], out["passed"], out["failed"], out["success_rate"]) == (True, 2, 0, 1.0)
    assert out["summary"] == f"{LLM_MODEL} wrote 2 file(s): add.py, test_add.py"
    edits = json.loads(Path(out["edits_path"]).read_text(encoding="utf-8"))
    assert {e["path"]: e["content"] for e in edits["edits"]} == PASSING
    report = json.loads(Path(out["report_path"]).read_text(encoding="utf-8"))
    assert report["sandbox"] in ("bwrap", "unshare")  # the generated code ran confined
    # both generations were metered as the model server counted them, and settled on the run
    assert [u["tokens"] for u in usage[::2]] == [c["usage"]["total_tokens"] for c in flows.model.answered()[before:]]
    assert run["spent_tokens"] == sum(u["tokens"] for u in usage) > 0 and run["spent_cost_usd"] > 0
    assert_ledger_held_for(flows.ledger_url, run_id)


def test_upgrade_is_announced_on_redis_approved_over_http_and_promoted(flows):
    with flows.client() as admin, Channels(flows.broker_url, "cogo:approvals", "cogo:upgrades") as channels:
        run_id = admin.submit("upgrade", tenant=TENANT,
                              payload={"proposal": "a function add(a, b) that returns the sum of a and b"})
        request = channels.wait_for(lambda ch, m: ch == "cogo:approvals" and m["run_id"] == run_id,
                                    what="the approval request on cogo:approvals")
        assert (request["type"], request["tenant"], request["node"], request["workflow"]) == \
            ("approval.requested", TENANT, "approve", "upgrade")
        assert admin.run(run_id)["status"] == "waiting"
        assert trace(admin, run_id) == UPGRADE_UNTIL_ASKED
        [pending] = [a for a in admin.approvals(tenant=TENANT) if a["run_id"] == run_id]
        assert pending["id"] == request["approval_id"]

        approve_url = f"{flows.fleet.api_url}/api/approvals/{request['approval_id']}/approve"
        reader = new_key(flows.fleet, ["runs:read"], "auditor")
        refused = httpx.post(approve_url, headers=bearer(reader), json={"comment": "not mine to say"}, timeout=30)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "auth.scope", refused.text
        decider = new_key(flows.fleet, ["approvals:decide"], "release-manager")
        decided = httpx.post(approve_url, headers=bearer(decider), json={"comment": "ship it"}, timeout=30)
        assert decided.status_code == 202, decided.text
        assert decided.json()["by"] == "key:release-manager"

        run = admin.wait(run_id, timeout_s=60)
        assert run["status"] == "completed", run
        assert trace(admin, run_id) == UPGRADE_APPROVED
        [resolved] = admin.events(run_id, type="decision.approval.resolve")
        assert (resolved["data"]["approved"], resolved["data"]["by"], resolved["data"]["to"]) == \
            (True, "key:release-manager", "promote")
        assert_each_assignment_ran_once(admin, run_id, [("propose", "codegen.generate.0"),
                                                        ("evaluate", "code.build-test.0")])
        assert [a["status"] for a in admin.approvals(tenant=TENANT, status="approved") if a["run_id"] == run_id] == \
            ["approved"]
        promoted = channels.wait_for(lambda ch, m: ch == "cogo:upgrades" and m["run_id"] == run_id,
                                     what="the promotion on cogo:upgrades")
    assert promoted == {"run_id": run_id, "node": "promote", "message": {
        "action": "promote", "edits_path": run["output"]["edits_path"], "success_rate": 1.0}}
    assert run["output"]["promoted"] is True
    assert run["output"]["approval"] == {"approved": True, "by": "key:release-manager", "comment": "ship it"}
    assert_ledger_held_for(flows.ledger_url, run_id)


def test_the_builtin_codegen_flow_stays_offline_even_with_an_endpoint_configured(flows):
    """The built-in flows ask for ``cogo-local``, the deterministic local model, so they never spend on a paid
    endpoint: only a flow that names another model (``flow-codegen-llm`` above) reaches ``COGO_LLM_URL``."""
    before = len(flows.model.chats())
    with flows.client() as client:
        run_id = client.submit("codegen", tenant=TENANT, payload={"spec": "a function add(a, b) returning a + b"})
        assert client.wait(run_id, timeout_s=120)["status"] == "completed"
    assert len(flows.model.chats()) == before
