"""Intents explain themselves over HTTP, and a bad payload is refused at ingress before anything is written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from bus.schema import agent_messages
from coordinator.schema import runs
from coordinator.store import run_view
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, registry_of

DECLARED = """
name: greet
description: Say hello to someone.
input:
  type: object
  required: [who]
  properties:
    who: {type: string, minLength: 1, description: Whom to greet.}
start: done
nodes:
  done: {kind: end, output: {greeting: "join(' ', ['hello', input.who])"}}
"""
UNDECLARED = """
name: freeform
start: done
nodes:
  done: {kind: end, output: input}
"""
INGRESS = ["/api/intents", "/api/orchestrator/execute", "/api/orchestrator/plan"]


@pytest.fixture
def fleet(engine):
    return Fleet(engine, {}, registry=registry_of(DECLARED, UNDECLARED, builtin=True))


@pytest.fixture
def client(fleet):
    return http(app_of(fleet), make_key(fleet.engine, "acme", ["admin"]))


def counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(runs)).scalar_one(),
                conn.execute(select(func.count()).select_from(agent_messages)).scalar_one())


def test_the_listing_shows_every_intent_with_its_workflow_description_and_schema(client):
    answer = client.get("/api/intents")
    assert answer.status_code == 200
    listed = {i["name"]: i for i in answer.json()["intents"]}
    assert list(listed)[:6] == ["codegen", "index", "upgrade", "demo", "embed", "echo"]
    assert set(listed) >= {"codegen-build-test", "indexing", "single-task", "greet", "freeform"}
    for entry in listed.values():
        assert set(entry) == {"name", "workflow", "version", "description", "input_schema"}
        assert entry["input_schema"]["type"] == "object"
    assert listed["index"]["workflow"] == "indexing" and listed["embed"]["workflow"] == "single-task"
    assert listed["index"]["input_schema"]["properties"]["documents"]["items"]["required"] == ["id", "text"]
    assert listed["greet"] == {"name": "greet", "workflow": "greet", "version": 1,
                               "description": "Say hello to someone.",
                               "input_schema": {"type": "object", "required": ["who"], "properties": {
                                   "who": {"type": "string", "minLength": 1, "description": "Whom to greet."}}}}
    assert listed["freeform"]["input_schema"] == {"type": "object"} and listed["freeform"]["description"] == ""


def test_the_listing_needs_credentials(fleet):
    answer = http(app_of(fleet)).get("/api/intents")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "auth.required"


@pytest.mark.parametrize("path", INGRESS)
@pytest.mark.parametrize("intent, payload, message", [
    ("index", {"documents": [{"id": "d1"}]}, "documents[0].text: field required"),
    ("index", {}, "documents: field required"),
    ("embed", {"documents": [{"id": "d1", "text": 7}]}, "documents[0].text: must be a string, got integer"),
    ("codegen", {"spec": ""}, "spec: must have at least 1 character"),
    ("upgrade", {"note": "x"}, "payload: field required: proposal or spec"),
    ("demo", {"specs": []}, "specs: must have at least 1 item"),
    ("greet", {"who": 3}, "who: must be a string, got integer"),
])
def test_a_bad_payload_is_refused_at_ingress_with_its_path_and_nothing_is_written(client, engine, path, intent,
                                                                                   payload, message):
    answer = client.post(path, json={"tenant": "acme", "intent": intent, "payload": payload})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "payload.invalid"
    assert error["message"].startswith(message)
    assert error["details"]["intent"] == intent and error["details"]["errors"][0]["message"]
    assert counts(engine) == (0, 0)


@pytest.mark.parametrize("intent, payload", [
    ("index", {"documents": [{"id": "d1", "text": "Alice met Bob."}]}),
    ("embed", {"documents": [{"id": "d1", "text": "Alice met Bob."}]}),
    ("codegen", {"spec": "a function add(a, b)"}),
    ("upgrade", {"proposal": "bump"}),
    ("demo", {}),
    ("echo", {"anything": ["goes"]}),
    ("freeform", {"whatever": 1}),
])
def test_a_valid_payload_is_accepted_and_planned(client, engine, intent, payload):
    planned = client.post("/api/orchestrator/plan", json={"tenant": "acme", "intent": intent, "payload": payload})
    assert planned.status_code == 200 and planned.json()["decisions"], planned.text
    answer = client.post("/api/intents", json={"tenant": "acme", "intent": intent, "payload": payload})
    assert answer.status_code == 202, answer.text
    with engine.connect() as conn:
        assert run_view(conn, answer.json()["id"])["input"] == payload


def test_echo_is_a_real_echo_and_embed_is_what_echo_used_to_run(client, fleet):
    payload = {"hello": ["world", {"n": 1}], "empty": {}}
    echoed = client.post("/api/intents", json={"tenant": "acme", "intent": "echo", "payload": payload}).json()["id"]
    fleet.drain()
    run = client.get(f"/api/runs/{echoed}").json()
    assert (run["status"], run["workflow"], run["output"]) == ("completed", "echo", payload)

    embedded = client.post("/api/intents", json={"tenant": "acme", "intent": "embed",
                                                 "payload": {"documents": [{"id": "d", "text": "x"}]}}).json()["id"]
    assert client.get(f"/api/runs/{embedded}").json()["workflow"] == "single-task"


def test_a_declared_schema_reaches_the_workflow_intact(client, fleet):
    run_id = client.post("/api/intents", json={"tenant": "acme", "intent": "greet", "payload": {"who": "Ana"}})
    fleet.drain()
    assert client.get(f"/api/runs/{run_id.json()['id']}").json()["output"] == {"greeting": "hello Ana"}
