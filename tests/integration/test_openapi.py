"""The API documents itself truthfully, and its docs work offline.

The walk: for every operation of the published document, a set of requests (valid, unknown ids, bad
bodies, bad parameters, a body past the limit, no or a wrong key), each sent twice around a drain of the
fleet (so decided approvals and ended runs answer their conflicts). Every answer's status must be declared
for that operation and its body must validate against the declared schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import jsonschema_rs
import pytest
from sqlalchemy import select

from coordinator.api.openapi import PUBLIC_PATHS, STATIC_PREFIX
from coordinator.schema import approvals
from tests.support.api import ASK, app_of, http, make_key
from tests.support.harness import Fleet, registry_of

MAX_BODY = 4096
BODIES = {
    "/api/intents": {"tenant": "acme", "intent": "echo", "payload": {"x": 1}},
    "/api/orchestrator/execute": {"tenant": "acme", "intent": "echo", "payload": {"x": 1}},
    "/api/orchestrator/plan": {"tenant": "acme", "intent": "echo", "payload": {"x": 1}},
    "/api/approvals/{approval_id}/approve": {"comment": "walk"},
    "/api/approvals/{approval_id}/reject": {"comment": "walk"},
    "/api/runs/{run_id}/signals/{name}": {"data": {"a": 1}},
    "/api/runs/{run_id}/cancel": {"reason": "walk"},
}
"""A valid body per operation that takes one (any other gets ``{}``)."""
BAD_BODIES = [b"{not json", b"[]", b'{"unexpected": [1, 2]}', b'{"tenant": 5, "intent": "", "payload": "x"}',
              b'{"tenant": "acme", "intent": "index", "payload": {"documents": [{"id": "d1"}]}}',
              b'{"tenant": "acme", "intent": "no-such-intent"}', b'{"tenant": "\xff"}']
TOO_LARGE = json.dumps({"tenant": "acme", "intent": "echo", "payload": {"blob": "x" * (MAX_BODY + 1)}}).encode()
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
def world(engine):
    """A fleet over ``engine`` with a completed echo run, a run waiting for a person, and the API."""
    fleet = Fleet(engine, {}, registry=registry_of(ASK, builtin=True))
    fleet.settings = replace(fleet.settings, max_body_bytes=MAX_BODY).checked()
    key = make_key(engine, "acme", ["admin"])
    client = http(app_of(fleet), key)
    client.raise_server_exceptions = False
    ended = client.post("/api/intents", json={"tenant": "acme", "intent": "echo"}).json()["id"]
    waiting = client.post("/api/intents", json={"tenant": "acme", "intent": "ask"}).json()["id"]
    fleet.drain()
    with engine.connect() as conn:
        approval = conn.execute(select(approvals.c.id).where(approvals.c.run_id == waiting)).scalar_one()
    ids = {"run_id": [waiting, ended, "no-such-run"], "approval_id": [approval, "no-such-approval"],
           "name": ["go"]}
    return fleet, client, ids


def test_the_document_declares_the_real_error_body_security_and_no_fastapi_validation_error(world):
    _fleet, client, _ids = world
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec) and "ValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message", "retryable", "details"]
    schemes = spec["components"]["securitySchemes"]
    assert set(schemes) == {"bearer", "apikey"}
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert (schemes["apikey"]["type"], schemes["apikey"]["in"], schemes["apikey"]["name"]) == ("apiKey", "header",
                                                                                            "apikey")
    for path, method, operation in operations(spec):
        errors = {s: r for s, r in operation["responses"].items() if not s.startswith("2")}
        for status, response in errors.items():
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, \
                (method, path, status)
        public = path in PUBLIC_PATHS
        assert operation["security"] == ([] if public else [{"bearer": []}, {"apikey": []}]), (method, path)
        assert "503" in errors
        assert public or {"401", "403"} <= set(errors), (method, path)
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= set(errors), (method, path)
        if "{run_id}" in path or "{approval_id}" in path:
            assert "404" in errors, (method, path)
    by_op = {(m, p): o for p, m, o in operations(spec)}
    for ingress in ("/api/intents", "/api/orchestrator/execute"):
        assert {"404", "422", "429"} <= set(by_op[("post", ingress)]["responses"])
        assert "payload.invalid" in by_op[("post", ingress)]["responses"]["422"]["description"]
    for conflict, code in [("/api/approvals/{approval_id}/approve", "approval.not_pending"),
                           ("/api/runs/{run_id}/cancel", "run.terminal")]:
        assert code in by_op[("post", conflict)]["responses"]["409"]["description"]


def test_every_answer_of_every_operation_is_declared_and_matches_its_schema(world):
    fleet, client, ids = world
    spec = client.get("/openapi.json").json()
    seen: dict[tuple[str, str], set[int]] = {}
    for _round in range(2):
        for path, method, operation in operations(spec):
            for url, kwargs in requests_for(path, method, operation, ids):
                answer = client.request(method.upper(), url, **kwargs)
                check_declared(spec, path, method, operation, answer)
                seen.setdefault((method, path), set()).add(answer.status_code)
        fleet.drain()
    assert set(seen) == {(m, p) for p, m, _ in operations(spec)}
    statuses = set().union(*seen.values())
    assert {200, 202, 400, 401, 404, 409, 422} <= statuses, statuses
    assert all(s < 500 for s in statuses), seen


def test_docs_and_redoc_load_only_local_assets_that_answer_with_their_type(world):
    _fleet, client, _ids = world
    for page in ("/docs", "/redoc"):
        answer = http(client.app).get(page)  # no key: the docs are public
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        html = answer.text
        assert "http://" not in html and "https://" not in html and "//cdn" not in html, page
        urls = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assets = [u for u in urls if u.startswith(STATIC_PREFIX + "/")]
        assert assets and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert "/openapi.json" in urls
        for url in urls:
            fetched = http(client.app).get(url)
            assert fetched.status_code == 200, url
            kind = fetched.headers["content-type"]
            if url.endswith(".js"):
                assert kind.split(";")[0] in ("text/javascript", "application/javascript"), (url, kind)
            elif url.endswith(".css"):
                assert kind.startswith("text/css"), (url, kind)
            elif url.endswith(".png"):
                assert kind == "image/png", (url, kind)
            else:
                assert kind.startswith("application/json"), (url, kind)
            assert len(fetched.content) > 0


def test_the_vendored_assets_ship_with_their_licences():
    from coordinator.api.openapi import STATIC_DIR

    for viewer in ("swagger-ui", "redoc"):
        licence = (STATIC_DIR / viewer / "LICENSE.txt").read_text()
        assert "Permission" in licence or "Apache License" in licence


# -- the walk ------------------------------------------------------------------------------------------------
def operations(spec: dict[str, Any]):
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def requests_for(path: str, method: str, operation: dict[str, Any], ids: dict[str, list[str]]):
    """The requests of one operation: every id (known and unknown), bad parameters, bad and large bodies."""
    names = re.findall(r"{(\w+)}", path)
    choices = [[]]
    for name in names:
        choices = [c + [(name, v)] for c in choices for v in ids.get(name, ["no-such-thing"])]
    query = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
    body = BODIES.get(path, {})
    for chosen in choices:
        url = path
        for name, value in chosen:
            url = url.replace("{" + name + "}", value)
        params = {"run_id": ids["run_id"][0]} if "run_id" in query else {}
        sends = {"json": body} if "requestBody" in operation else {}
        yield url, {"params": params, **sends}
        yield url, {"params": params, "headers": {"Authorization": ""}, **sends}
        yield url, {"params": params, "headers": {"Authorization": "Bearer cogo_000000000000_wrong"}, **sends}
        for name, parameter in query.items():
            yield url, {"params": {**params, name: "no-such-run" if name == "run_id" else "not-a-number"}, **sends}
            if parameter.get("required"):
                yield url, {"params": {k: v for k, v in params.items() if k != name}, **sends}
        if "requestBody" in operation:
            for bad in [*BAD_BODIES, TOO_LARGE]:
                yield url, {"params": params, "content": bad, "headers": {"content-type": "application/json"}}


def check_declared(spec, path, method, operation, answer) -> None:
    where = f"{method.upper()} {path} → {answer.status_code} {answer.text[:300]}"
    declared = operation["responses"].get(str(answer.status_code))
    assert declared is not None, f"undeclared status: {where}"
    content = declared.get("content", {}).get("application/json")
    if content is None:
        return
    assert answer.headers["content-type"].startswith("application/json"), where
    validator = jsonschema_rs.Draft202012Validator({**content["schema"], "components": spec["components"]})
    problems = [e.message for e in validator.iter_errors(answer.json())]
    assert not problems, f"{where}: {problems}"
