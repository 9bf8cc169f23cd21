"""Every error the HTTP servers answer is ``{"error": {"code", "message", "retryable", "details"}}`` (a
``Problem``) with a fitting status."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus.errors import CogoError, Forbidden, InvalidRequest, NotFound, Problem, RateLimited, Unauthenticated

log = logging.getLogger(__name__)

STATUS = {"run.unknown": 404, "intent.unknown": 404, "workflow.unknown": 404, "conflict": 409,
          "approval.unknown": 404, "approval.not_pending": 409, "idempotency.mismatch": 409, "run.terminal": 409,
          "key.unknown": 404, "dead_letter.not_held": 409,
          "ledger.unavailable": 503, "broker.unavailable": 503, "auth.unavailable": 503}
"""HTTP status of an error code; otherwise by the error's type (``_by_type``), else 400."""

_BY_TYPE: tuple[tuple[type[CogoError], int], ...] = (
    (NotFound, 404), (Unauthenticated, 401), (Forbidden, 403), (RateLimited, 429), (InvalidRequest, 422))


def error_response(code: str, message: str, status: int, details: dict | None = None,
                   headers: dict[str, str] | None = None, *, retryable: bool | None = None) -> JSONResponse:
    """The one error body: a ``Problem`` (retryable by default when the status says "try again later")."""
    retry = status in (429, 503) if retryable is None else retryable
    return JSONResponse({"error": Problem(code, message, retry, details or {}).to_dict()},
                        status_code=status, headers=headers)


def status_of(exc: CogoError) -> int:
    """The HTTP status for a CogoError."""
    if exc.code in STATUS:
        return STATUS[exc.code]
    return next((status for kind, status in _BY_TYPE if isinstance(exc, kind)), 400)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error — ours, validation, unknown routes, ledger outages, bugs — with the one body."""

    @app.exception_handler(CogoError)
    async def _cogo_error(_req: Request, exc: CogoError) -> JSONResponse:
        headers = None
        if isinstance(exc, Unauthenticated):
            headers = {"WWW-Authenticate": 'Bearer realm="cogo"'}
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.details.get("retry_after_s", 1))))}
        return error_response(exc.code, str(exc), status_of(exc), exc.details, headers, retryable=exc.retryable)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "request.invalid", 404: "not_found", 405: "method.not_allowed"}.get(exc.status_code,
                                                                                          "http.error")
        return error_response(code, str(exc.detail), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(DBAPIError)
    async def _ledger(_req: Request, exc: DBAPIError) -> JSONResponse:
        log.error("ledger error: %s", exc)
        return error_response("ledger.unavailable", "the ledger cannot answer right now; try again", 503)

    @app.exception_handler(Exception)
    async def _bug(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response("internal", f"internal error: {type(exc).__name__}", 500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())),
                   "message": e.get("msg", "invalid")} for e in exc.errors()]
        return error_response("request.invalid", f"{errors[0]['field']}: {errors[0]['message']}", 422,
                              {"errors": errors})


def _field(loc: tuple) -> str:
    """A validation error's location as a path: ``budget.maxTokens``, ``documents[0].text``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or (str(loc[0]) if loc else "request")
