"""Limits with clear answers: body size, strict JSON, finite budgets under a ceiling, a shared rate limit."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
from sqlalchemy import select

from bus.schema import agent_messages
from coordinator.schema import rate_buckets, runs
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, registry_of, settle, submit
from workers.handler import WorkResult

ONE = """
name: one
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: work, next: done}
  done: {kind: end, output: {work: context.work}}
"""


def _fleet(engine, handler=None, **settings):
    fleet = Fleet(engine, {("t", "work"): handler or (lambda ctx, p: WorkResult(output={"ok": True}))},
                  registry=registry_of(ONE))
    fleet.settings = replace(fleet.settings, **settings).checked() if settings else fleet.settings
    return fleet


def _intent(**extra):
    return {"tenant": "acme", "intent": "one", "payload": {}, **extra}


def test_a_body_past_the_limit_answers_413_and_stores_nothing(engine):
    fleet = _fleet(engine, max_body_bytes=4096)
    client = http(app_of(fleet), make_key(engine, "acme", ["intents:write"]))
    big = _intent(payload={"blob": "x" * 5000})
    answer = client.post("/api/intents", json=big)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request.too_large"
    streamed = client.post("/api/intents", content=iter([json.dumps(big).encode()]),
                           headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    with engine.connect() as conn:
        assert conn.execute(select(runs.c.id)).all() == []
    assert client.post("/api/intents", json=_intent()).status_code == 202


def test_nan_and_infinity_are_refused_wherever_json_enters(engine):
    fleet = _fleet(engine)
    client = http(app_of(fleet), make_key(engine, "acme", ["admin"]))
    bodies = ('{"tenant":"acme","intent":"one","payload":{},"budget":{"maxCostUsd":Infinity}}',
              '{"tenant":"acme","intent":"one","payload":{"x":NaN}}',
              '{"tenant":"acme","intent":"one","payload":{"x":[-Infinity]}}')
    for text in bodies:
        for content_type in ("application/json", "Application/JSON; charset=utf-8", "application/vnd.x+json"):
            answer = client.post("/api/intents", content=text, headers={"content-type": content_type})
            assert answer.status_code == 422 and answer.json()["error"]["code"] == "request.invalid", text
    two_types = client.build_request("POST", "/api/intents", content=bodies[1])
    two_types.headers = httpx.Headers([("content-type", "application/json"), ("content-type", "text/plain"),
                                       *((k, v) for k, v in two_types.headers.items() if k != "content-type")])
    assert client.send(two_types).status_code == 422
    with engine.connect() as conn:
        assert conn.execute(select(runs.c.id)).all() == []


def test_budgets_must_be_finite_and_under_the_operators_ceiling(engine):
    fleet = _fleet(engine, max_run_cost_usd=10.0, max_run_tokens=1000)
    client = http(app_of(fleet), make_key(engine, "acme", ["intents:write"]))
    for budget in ({"maxCostUsd": 11.0}, {"maxTokens": 1001}, {"maxCostUsd": -1}, {"maxTokens": 10 ** 30}):
        answer = client.post("/api/intents", json=_intent(budget=budget))
        assert answer.status_code == 422, (budget, answer.text)
        assert answer.json()["error"]["code"] in ("budget.over_ceiling", "request.invalid")
    assert client.post("/api/intents", json=_intent(budget={"maxCostUsd": 10.0, "maxTokens": 1000})).status_code \
        == 202
    unbudgeted = client.post("/api/intents", json=_intent()).json()["id"]  # no budget anywhere: the ceilings
    with engine.connect() as conn:
        budget = conn.execute(select(runs.c.budget).where(runs.c.id == unbudgeted)).scalar_one()
    assert budget == {"maxCostUsd": 10.0, "maxTokens": 1000}


def test_the_rate_limit_is_shared_by_every_api_process_and_says_when_to_retry(engine):
    fleet = _fleet(engine, rate_per_s=0.01, rate_burst=5)
    key = make_key(engine, "acme", ["intents:write"])
    processes = [http(app_of(fleet), key), http(app_of(fleet), key)]  # two API instances, one ledger

    def post(i: int) -> int:
        return processes[i % 2].post("/api/intents", json=_intent()).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(post, range(16)))
    assert codes.count(202) == 5 and codes.count(429) == 11
    answer = processes[0].post("/api/intents", json=_intent())
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "rate.limited"
    assert int(answer.headers["retry-after"]) >= 1
    other = http(app_of(fleet), make_key(engine, "zeta", ["intents:write"]))
    assert other.post("/api/intents", json={**_intent(), "tenant": "zeta"}).status_code == 202
    with engine.connect() as conn:
        assert len(conn.execute(select(runs.c.id).where(runs.c.tenant == "acme")).all()) == 5
        assert conn.execute(select(rate_buckets.c.tokens).where(rate_buckets.c.tenant == "acme")).scalar() < 1


def test_a_worker_output_that_is_not_strict_json_fails_the_attempt_and_never_reaches_the_ledger(engine):
    fleet = _fleet(engine, lambda ctx, p: WorkResult(output={"score": float("nan")}))
    run_id = submit(fleet, "one")
    settle(fleet)
    with engine.connect() as conn:
        run = conn.execute(select(runs.c.status, runs.c.error).where(runs.c.id == run_id)).one()
        stored = [r.payload for r in conn.execute(select(agent_messages.c.payload))]
    assert run.status == "failed" and "output.invalid" in json.dumps(run.error)
    assert "NaN" not in json.dumps(stored)
