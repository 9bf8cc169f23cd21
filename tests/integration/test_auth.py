"""The trust boundary at the edge: keys and JWTs, scopes, and tenants that never see each other's rows."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator import keys
from coordinator.metrics import create_app as metrics_app
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, registry_of, settle, submit
from workers.handler import WorkResult

ASK = """
name: ask
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: work, next: gate}
  gate: {kind: approval, prompt: "ship?", approve: done, reject: done}
  done: {kind: end, output: {by: context.gate.by}}
"""
OPEN = {"/healthz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}
"""The only paths that answer without a principal: they carry no tenant's data."""


@pytest.fixture
def world(engine):
    """Two tenants' runs, each waiting for an approval, and the API over the same ledger."""
    fleet = Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"secret": f"of {ctx.tenant}"})},
                  registry=registry_of(ASK))
    runs = {tenant: submit(fleet, "ask", {"note": f"input of {tenant}"}, tenant=tenant) for tenant in ("acme", "zeta")}
    settle(fleet)
    return fleet, app_of(fleet), runs


def _approval_of(fleet, run_id: str) -> str:
    from sqlalchemy import select

    from coordinator.schema import approvals
    with fleet.engine.connect() as conn:
        return conn.execute(select(approvals.c.id).where(approvals.c.run_id == run_id)).scalar_one()


def _protected_routes(app):
    """Every operation the API publishes, but the open ones."""
    for path, operations in app.openapi()["paths"].items():
        if path not in OPEN and not path.startswith("/static"):
            for method in operations:
                yield method.upper(), path


def test_every_endpoint_but_health_and_docs_needs_a_principal(world):
    _fleet, app, runs = world
    anonymous = http(app)
    checked = 0
    for method, path in _protected_routes(app):
        url = path.replace("{run_id}", runs["acme"]).replace("{approval_id}", "x").replace("{name}", "go") \
                  .replace("{key_id}", "kx")
        answer = anonymous.request(method, url, json={})
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "auth.required"
        assert "acme" not in answer.text
        checked += 1
    assert checked >= 15
    assert anonymous.get("/healthz").status_code == 200


def test_keys_are_accepted_as_bearer_and_as_apikey_and_refused_when_wrong_or_revoked(world):
    fleet, app, runs = world
    key = make_key(fleet.engine, "acme", ["runs:read"])
    assert http(app, key).get(f"/api/runs/{runs['acme']}").status_code == 200
    assert http(app).get(f"/api/runs/{runs['acme']}", headers={"apikey": key}).status_code == 200
    for wrong in (key[:-2] + "xx", "cogo_k000000000000_nope", "not-a-key", key + "x"):
        answer = http(app, wrong).get(f"/api/runs/{runs['acme']}")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "auth.invalid"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    key_id = key.split("_")[1]
    with fleet.engine.begin() as conn:
        keys.revoke_key(conn, key_id)
    assert http(app, key).get(f"/api/runs/{runs['acme']}").status_code == 401


def test_only_a_hash_of_the_key_is_stored(world):
    fleet, _app, _runs = world
    key = make_key(fleet.engine, "acme", ["runs:read"])
    with fleet.engine.connect() as conn:
        stored = json.dumps([dict(r) for r in conn.exec_driver_sql("SELECT * FROM api_keys").mappings()])
    secret = key.removeprefix("cogo_").split("_", 1)[1]  # cogo_<id>_<secret>; the secret may hold "_" itself
    assert len(secret) >= 40 and key not in stored and secret not in stored


def test_another_tenants_run_approval_and_events_answer_404_with_no_data(world):
    fleet, app, runs = world
    acme = http(app, make_key(fleet.engine, "acme", ["runs:read", "runs:cancel", "intents:write",
                                                     "approvals:decide"]))
    theirs, their_approval = runs["zeta"], _approval_of(fleet, runs["zeta"])
    for method, path in _protected_routes(app):
        if "{run_id}" not in path and "{approval_id}" not in path:
            continue
        url = path.replace("{run_id}", theirs).replace("{approval_id}", their_approval).replace("{name}", "go")
        answer = acme.request(method, url, json={})
        assert answer.status_code == 404, (method, path, answer.text)
        assert "zeta" not in answer.text and "input of" not in answer.text
    state = acme.get("/api/orchestrator/state", params={"run_id": theirs})
    assert state.status_code == 404 and "zeta" not in state.text
    assert {r["id"] for r in acme.get("/api/runs").json()["runs"]} == {runs["acme"]}
    assert acme.get("/api/runs", params={"tenant": "zeta"}).json()["runs"] == []
    assert [a["run_id"] for a in acme.get("/api/approvals").json()["approvals"]] == [runs["acme"]]
    assert acme.get("/api/approvals", params={"tenant": "zeta"}).json()["approvals"] == []
    # Nothing happened to the other tenant's run.
    assert _approval_of(fleet, theirs) == their_approval
    admin = http(app, make_key(fleet.engine, "ops", ["admin"]))
    assert {r["id"] for r in admin.get("/api/runs").json()["runs"]} == set(runs.values())
    assert admin.get(f"/api/runs/{theirs}").json()["status"] == "waiting"


def test_the_tenant_in_a_body_must_be_the_keys(world):
    fleet, app, _runs = world
    acme = http(app, make_key(fleet.engine, "acme", ["intents:write"]))
    answer = acme.post("/api/intents", json={"tenant": "zeta", "intent": "ask", "payload": {}})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "auth.tenant"
    assert acme.post("/api/intents", json={"tenant": "acme", "intent": "ask", "payload": {}}).status_code == 202


def test_who_approved_is_the_principal_not_a_field_of_the_body(world):
    fleet, app, runs = world
    approver = http(app, make_key(fleet.engine, "acme", ["approvals:decide", "runs:read"]))
    approval = _approval_of(fleet, runs["acme"])
    forged = approver.post(f"/api/approvals/{approval}/approve", json={"by": "ceo"})
    assert forged.status_code == 422
    answer = approver.post(f"/api/approvals/{approval}/approve", json={"comment": "ok"})
    assert answer.status_code == 202 and answer.json()["by"] == "key:test acme"
    settle(fleet)
    run = approver.get(f"/api/runs/{runs['acme']}").json()
    assert run["status"] == "completed" and run["output"]["by"] == "key:test acme"


@pytest.mark.parametrize("scope, allowed", [
    ("runs:read", {"read"}),
    ("intents:write", {"submit", "signal"}),
    ("runs:cancel", {"cancel"}),
    ("approvals:decide", {"approve"}),
    ("admin", {"read", "submit", "signal", "cancel", "approve", "keys"}),
])
def test_each_scope_does_what_it_names_and_nothing_else(world, scope, allowed):
    fleet, app, runs = world
    client = http(app, make_key(fleet.engine, "acme", [scope]))
    run_id = runs["acme"]
    attempts = {
        "read": lambda: client.get(f"/api/runs/{run_id}/explain"),
        "submit": lambda: client.post("/api/intents", json={"tenant": "acme", "intent": "ask", "payload": {}}),
        "signal": lambda: client.post(f"/api/runs/{run_id}/signals/nothing", json={"data": {}}),
        "approve": lambda: client.post(f"/api/approvals/{_approval_of(fleet, run_id)}/reject", json={}),
        "cancel": lambda: client.post(f"/api/runs/{run_id}/cancel", json={}),
        "keys": lambda: client.get("/api/keys"),
    }
    for action, call in attempts.items():
        answer = call()
        if action in allowed:
            assert answer.status_code < 300, (scope, action, answer.text)
        else:
            assert answer.status_code == 403, (scope, action, answer.text)
            assert answer.json()["error"]["code"] == "auth.scope"


def test_keys_over_http_are_admin_only_and_shown_once(world):
    fleet, app, runs = world
    admin = http(app, make_key(fleet.engine, "ops", ["admin"]))
    created = admin.post("/api/keys", json={"tenant": "acme", "scopes": ["runs:read"], "name": "ci"})
    assert created.status_code == 201
    key = created.json()["key"]
    listed = admin.get("/api/keys").text
    assert key not in listed and created.json()["id"] in listed
    assert http(app, key).get(f"/api/runs/{runs['acme']}").status_code == 200
    assert http(app, key).get("/api/keys").status_code == 403
    assert admin.post("/api/keys", json={"tenant": "acme", "scopes": ["root"]}).status_code == 422
    assert admin.delete(f"/api/keys/{created.json()['id']}").status_code == 200
    assert http(app, key).get(f"/api/runs/{runs['acme']}").status_code == 401
    assert admin.delete(f"/api/keys/{created.json()['id']}").status_code == 404


def _hs256_by_hand(claims: dict, secret: bytes) -> str:
    """An HS256 JWT made without PyJWT's guard (it refuses a PEM key as an HMAC secret; an attacker does not)."""
    import base64
    import hashlib
    import hmac

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing = f"{part(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{part(json.dumps(claims).encode())}"
    return f"{signing}.{part(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


def _token(key, claims, algorithm="HS256", headers=None):
    return jwt.encode({"exp": time.time() + 60, **claims}, key, algorithm=algorithm, headers=headers)


def test_hs256_jwts_carry_tenant_and_scopes(world):
    fleet, _app, runs = world
    fleet.settings = replace(fleet.settings, jwt_hs256_secret="s" * 32)
    app = app_of(fleet)
    good = _token("s" * 32, {"tenant": "acme", "scopes": ["runs:read"], "sub": "alice"})
    assert http(app, good).get(f"/api/runs/{runs['acme']}").status_code == 200
    assert http(app, good).get(f"/api/runs/{runs['zeta']}").status_code == 404
    assert http(app, good).post(f"/api/runs/{runs['acme']}/cancel", json={}).status_code == 403
    refused = [
        _token("t" * 32, {"tenant": "acme", "scopes": ["runs:read"]}),                     # wrong secret
        jwt.encode({"exp": time.time() - 5, "tenant": "acme"}, "s" * 32, algorithm="HS256"),  # expired
        jwt.encode({"tenant": "acme", "scopes": ["admin"]}, "s" * 32, algorithm="HS256"),     # no exp
        jwt.encode({"exp": time.time() + 60, "tenant": "acme", "scopes": ["admin"]}, None, algorithm="none"),
    ]
    for token in refused:
        answer = http(app, token).get(f"/api/runs/{runs['acme']}")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "auth.invalid", token


@pytest.mark.parametrize("form", ["pem", "jwks"])
def test_rs256_jwts_are_checked_against_the_operators_public_key(world, tmp_path, form):
    fleet, _app, runs = world
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / ("key.pem" if form == "pem" else "jwks.json")
    if form == "pem":
        path.write_bytes(public_pem)
    else:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    fleet.settings = replace(fleet.settings, jwt_public_key_file=path)
    app = app_of(fleet)
    good = _token(private, {"tenant": "acme", "scope": "runs:read"}, "RS256", {"kid": "k1"})
    assert http(app, good).get(f"/api/runs/{runs['acme']}").status_code == 200
    # The classic confusion: an HS256 token "signed" with the public key must not pass.
    confused = _hs256_by_hand({"exp": time.time() + 60, "tenant": "acme", "scopes": ["admin"]}, public_pem)
    assert http(app, confused).get(f"/api/runs/{runs['acme']}").status_code == 401
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = _token(other, {"tenant": "acme", "scopes": ["admin"]}, "RS256", {"kid": "k1"})
    assert http(app, forged).get(f"/api/runs/{runs['acme']}").status_code == 401


def test_metrics_cards_show_a_tenant_only_its_own_runs(world):
    fleet, _app, runs = world
    app = metrics_app(fleet.engine, fleet.settings)
    acme = http(app, make_key(fleet.engine, "acme", ["runs:read"]))
    assert http(app).get("/api/metrics/workflows/summary").status_code == 401
    summary = acme.get("/api/metrics/workflows/summary").text
    assert runs["zeta"] not in summary
    assert acme.get("/metrics").status_code == 403
    admin = http(app, make_key(fleet.engine, "ops", ["admin"]))
    assert admin.get("/metrics").status_code == 200
    for bad in ("inf", "nan", "-1", "0", "1e400", "abc", str(10 ** 9)):
        answer = acme.get("/api/metrics/bus/latency", params={"window_s": bad})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "request.invalid", bad


@pytest.mark.parametrize("content", [None, '{"keys": ["not an object"]}', "not a key"])
def test_an_unusable_jwt_key_file_is_a_503_that_names_no_path(world, tmp_path, content):
    fleet, _app, runs = world
    path = tmp_path / "secret-dir" / "jwks.json"
    if content is not None:
        path.parent.mkdir()
        path.write_text(content)
    fleet.settings = replace(fleet.settings, jwt_public_key_file=path)
    token = _token("s" * 32, {"tenant": "acme", "scopes": ["runs:read"]})
    answer = http(app_of(fleet), token).get(f"/api/runs/{runs['acme']}")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "auth.unavailable"
    assert "secret-dir" not in answer.text
