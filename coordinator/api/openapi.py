"""The API describes itself truthfully, and its viewers work offline.

``document`` post-processes FastAPI's generated OpenAPI document in one place: every error answer is the
real body (the ``Error`` component, ``{"error": {"code", "message", "retryable", "details"}}``) instead of FastAPI's
``HTTPValidationError``, every operation lists every status it can answer (and the codes behind each),
and the security schemes are the API's own (a bearer key or token, or an ``apikey`` header).

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their JavaScript and CSS from ``static/``, vendored
into the package (``static/README.txt`` names the versions and licences), never from a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static"
"""Where the vendored assets are served (``/static/swagger-ui/…``, ``/static/redoc/…``)."""
OPENAPI_URL = "/openapi.json"
PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/redoc", OPENAPI_URL})
"""Paths answered without credentials, with everything under ``STATIC_PREFIX``."""
SWAGGER_JS = f"{STATIC_PREFIX}/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = f"{STATIC_PREFIX}/swagger-ui/swagger-ui.css"
FAVICON = f"{STATIC_PREFIX}/swagger-ui/favicon-32x32.png"
REDOC_JS = f"{STATIC_PREFIX}/redoc/redoc.standalone.js"

DESCRIPTION = """\
cogo runs AI-agent workflows on a message-queue worker fleet. Submit an intent (`POST /api/intents`;
`GET /api/intents` lists them with their payload schemas), then read the run, its trace and what it
waits for.

Every request except `/healthz` and these docs needs a key: `Authorization: Bearer <key>` or
`apikey: <key>`. Every error answers `{"error": {"code", "message", "retryable", "details"}}` with a stable `code`.
"""

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "Every error the API answers: a stable code, a message for a person, and details.",
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "retryable", "details"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "description": "Stable, e.g. run.unknown, payload.invalid."},
            "message": {"type": "string", "description": "What went wrong, naming the field or id."},
            "retryable": {"type": "boolean", "description": "Whether the same request may succeed later as it is."},
            "details": {"type": "object", "additionalProperties": True,
                        "description": "Machine-readable specifics (e.g. errors: [{field|path, message}])."},
        },
    }},
}
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key or a JWT: Authorization: Bearer …"},
    "apikey": {"type": "apiKey", "in": "header", "name": "apikey", "description": "An API key in the apikey header."},
}

_WHY = {
    400: "The body could not be read as text (it is not UTF-8).",
    401: "No credentials, or a key or token that is not valid.",
    403: "The credentials do not allow this (scope or tenant).",
    404: "What the request names does not exist.",
    409: "The request conflicts with the current state.",
    413: "The request body is larger than COGO_MAX_BODY_BYTES.",
    422: "The request does not match its schema; details.errors lists every problem.",
    429: "Too many requests; the Retry-After header says how many seconds to wait.",
    503: "The ledger cannot answer right now; try again.",
}
_CODES = {400: ["request.invalid"], 401: ["auth.required", "auth.invalid", "auth.jwt_disabled"],
          403: ["auth.scope"], 413: ["request.too_large"],
          422: ["request.invalid"], 429: ["rate.limited"], 503: ["ledger.unavailable", "auth.unavailable"]}
"""The codes every answer of a status may carry; ``_PATH_IDS`` and ``_DECLARED`` add per-operation ones."""
_PATH_IDS = {"run_id": "run.unknown", "approval_id": "approval.unknown", "key_id": "key.unknown",
             "letter_id": "dead_letter.not_found"}
"""The 404 code of a path parameter that names something that may not exist."""
_INGRESS = {403: ["auth.tenant"], 404: ["intent.unknown"], 422: ["payload.invalid", "budget.over_ceiling"]}
_DECLARED: dict[tuple[str, str], dict[int, list[str]]] = {
    ("post", "/api/intents"): {**_INGRESS, 409: ["idempotency.mismatch"], 429: []},
    ("post", "/api/orchestrator/execute"): {**_INGRESS, 409: ["idempotency.mismatch"], 429: []},
    ("post", "/api/orchestrator/plan"): _INGRESS,
    ("get", "/api/orchestrator/state"): {404: ["run.unknown"]},
    ("post", "/api/approvals/{approval_id}/approve"): {409: ["approval.not_pending"]},
    ("post", "/api/approvals/{approval_id}/reject"): {409: ["approval.not_pending"]},
    ("post", "/api/runs/{run_id}/signals/{name}"): {409: ["run.terminal"]},
    ("post", "/api/runs/{run_id}/cancel"): {409: ["run.terminal"]},
    ("post", "/api/dead-letters/{letter_id}/requeue"): {409: ["dead_letter.not_held"], 422: ["budget.over_ceiling"]},
    ("post", "/api/dead-letters/{letter_id}/discard"): {409: ["dead_letter.not_held"]},
    ("get", "/api/runs/{run_id}/artifacts/{assignment_id}"): {403: ["artifact.outside"],
                                                             404: ["artifact.unknown", "artifact.missing"]},
}
"""What the generated document cannot know: which handlers raise which conflicts and lookups."""
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_ANNOTATIONS = {"type", "title", "description", "default"}
_FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")


def is_public(path: str) -> bool:
    """Whether ``path`` is answered without credentials (health, the docs and their assets)."""
    return path in PUBLIC_PATHS or path.startswith(STATIC_PREFIX + "/")


def install(app: FastAPI) -> None:
    """Serve the truthful document at ``/openapi.json`` and the offline ``/docs``, ``/redoc`` and assets.

    The app must be created with ``docs_url=None, redoc_url=None``.
    """
    app.openapi = lambda: document(app)
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built once: FastAPI's, made truthful by ``truthful``."""
    if app.openapi_schema is None:
        app.openapi_schema = truthful(get_openapi(title=app.title, version=app.version, summary=app.summary,
                                                  description=app.description, routes=app.routes))
    return app.openapi_schema


def truthful(spec: dict[str, Any]) -> dict[str, Any]:
    """Declare the real error body, every status of every operation, and the API's security schemes."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _FASTAPI_ERRORS:
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            if method in item:
                _describe(method, path, item[method])
    return spec


def _describe(method: str, path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's HTTPValidationError: not what the API answers
    for status, codes in sorted(statuses(method, path, operation).items()):
        responses[str(status)] = _error_response(status, codes)
    operation["security"] = [] if is_public(path) else [{"bearer": []}, {"apikey": []}]


def statuses(method: str, path: str, operation: dict[str, Any]) -> dict[int, list[str]]:
    """Every error status ``operation`` can answer, with the codes behind each (may be empty)."""
    found: dict[int, list[str]] = {503: list(_CODES[503])}
    if not is_public(path):
        found |= {401: list(_CODES[401]), 403: list(_CODES[403])}
    parameters = operation.get("parameters", [])
    if "requestBody" in operation:
        found |= {400: list(_CODES[400]), 413: list(_CODES[413]), 422: list(_CODES[422])}
    if any(_can_be_invalid(p) for p in parameters):
        found[422] = list(_CODES[422])
    for p in parameters:
        if p.get("in") == "path" and p.get("name") in _PATH_IDS:
            found.setdefault(404, []).append(_PATH_IDS[p["name"]])
    for status, codes in _DECLARED.get((method, path), {}).items():
        known = found.setdefault(status, list(_CODES.get(status, [])))
        known.extend(c for c in codes if c not in known)
    return found


def _can_be_invalid(parameter: dict[str, Any]) -> bool:
    """Whether a parameter can fail validation (422): a required query or header one can be missing, and
    one that is not a plain string can be malformed. A path parameter is always there once the route matched."""
    if parameter.get("required") and parameter.get("in") != "path":
        return True
    schema = parameter.get("schema", {})
    return any(o.get("type") not in ("string", "null") or set(o) - _ANNOTATIONS for o in schema.get("anyOf", [schema]))


def _error_response(status: int, codes: list[str]) -> dict[str, Any]:
    why = _WHY.get(status, "An error.")
    if codes:
        why += " Codes: " + ", ".join(f"`{c}`" for c in codes) + "."
    answer: dict[str, Any] = {"description": why,
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if status == 429:
        answer["headers"] = {"Retry-After": {"description": "Seconds to wait before trying again.",
                                             "schema": {"type": "integer"}}}
    return answer


router = APIRouter(include_in_schema=False)
_SWAGGER_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True}
"""No validator badge (it would call validator.swagger.io); keep the key across reloads."""


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``, with its assets from the package."""
    root = _root(request)
    return get_swagger_ui_html(openapi_url=root + OPENAPI_URL, title="cogo API", swagger_js_url=root + SWAGGER_JS,
                               swagger_css_url=root + SWAGGER_CSS, swagger_favicon_url=root + FAVICON,
                               swagger_ui_parameters=_SWAGGER_PARAMETERS)


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over ``/openapi.json``, with its script from the package and no web fonts."""
    root = _root(request)
    return get_redoc_html(openapi_url=root + OPENAPI_URL, title="cogo API", redoc_js_url=root + REDOC_JS,
                          redoc_favicon_url=root + FAVICON, with_google_fonts=False)
