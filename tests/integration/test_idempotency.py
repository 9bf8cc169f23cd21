"""Idempotent ingress: the same Idempotency-Key from the same tenant starts one run, whatever happens."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from coordinator.schema import idempotency_keys, runs
from tests.integration.test_limits import _fleet, _intent
from tests.support.api import app_of, http, make_key


def _count(engine, tenant: str = "acme") -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(runs).where(runs.c.tenant == tenant)).scalar_one()


def test_a_retried_request_gets_the_run_the_first_one_started_even_after_an_api_restart(engine):
    fleet = _fleet(engine)
    key = make_key(engine, "acme", ["intents:write"])
    first = http(app_of(fleet), key).post("/api/intents", json=_intent(), headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 202
    restarted = http(app_of(fleet), key)  # a new API process over the same ledger
    again = restarted.post("/api/intents", json=_intent(), headers={"Idempotency-Key": "order-17"})
    executed = restarted.post("/api/orchestrator/execute", json=_intent(), headers={"Idempotency-Key": "order-17"})
    assert again.status_code == executed.status_code == 202
    assert again.json()["id"] == executed.json()["id"] == first.json()["id"]
    assert _count(engine) == 1
    other = restarted.post("/api/intents", json=_intent(), headers={"Idempotency-Key": "order-18"})
    assert other.json()["id"] != first.json()["id"] and _count(engine) == 2


def test_the_same_key_for_a_different_request_is_a_conflict_and_writes_nothing(engine):
    fleet = _fleet(engine)
    client = http(app_of(fleet), make_key(engine, "acme", ["intents:write"]))
    client.post("/api/intents", json=_intent(), headers={"Idempotency-Key": "k1"})
    answer = client.post("/api/intents", json=_intent(payload={"x": 1}), headers={"Idempotency-Key": "k1"})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "idempotency.mismatch"
    assert _count(engine) == 1


def test_keys_belong_to_their_tenant(engine):
    fleet = _fleet(engine)
    acme = http(app_of(fleet), make_key(engine, "acme", ["intents:write"]))
    zeta = http(app_of(fleet), make_key(engine, "zeta", ["intents:write"]))
    a = acme.post("/api/intents", json=_intent(), headers={"Idempotency-Key": "same"}).json()["id"]
    z = zeta.post("/api/intents", json=_intent(tenant="zeta"), headers={"Idempotency-Key": "same"}).json()["id"]
    assert a != z and _count(engine, "acme") == _count(engine, "zeta") == 1


def test_concurrent_requests_with_one_key_start_one_run(engine):
    fleet = _fleet(engine)
    key = make_key(engine, "acme", ["intents:write"])
    clients = [http(app_of(fleet), key) for _ in range(2)]  # two API processes

    def post(i: int):
        answer = clients[i % 2].post("/api/intents", json=_intent(), headers={"Idempotency-Key": "burst"})
        return answer.status_code, answer.json().get("id")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(16)))
    assert {code for code, _ in answers} == {202}
    assert len({run_id for _, run_id in answers}) == 1
    assert _count(engine) == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(idempotency_keys)).scalar_one() == 1


def test_a_malformed_key_is_refused(engine):
    client = http(app_of(_fleet(engine)), make_key(engine, "acme", ["intents:write"]))
    for bad in ("has space", "x" * 201):
        answer = client.post("/api/intents", json=_intent(), headers={"Idempotency-Key": bad})
        assert answer.status_code == 422, bad
    assert _count(engine) == 0
