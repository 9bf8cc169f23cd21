"""Guards on what enters the API before any route sees it: a body size limit and strict JSON.

Python's JSON parser accepts ``NaN`` and ``Infinity``; they are not JSON, and a non-finite budget would
read back as "no limit". A request body carrying one is refused here, so nothing non-standard ever
reaches a route or the ledger.
"""

from __future__ import annotations

import json
from typing import Any

from bus.errors import Problem

_GONE = b"<disconnected>"
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def strict_json_loads(data: bytes | str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``.

    Raises:
        ValueError: the text is not strict JSON.
    """
    return json.loads(data, parse_constant=_refuse_constant)


def _why_not_strict(body: bytes) -> str | None:
    """Why ``body`` is refused before any route sees it, or None (malformed JSON is left to the route)."""
    try:
        strict_json_loads(body)
    except _NonFinite as exc:
        return f"the body carries {exc}, which is not JSON: numbers must be finite"
    except RecursionError:
        return "the body is nested too deeply"
    except ValueError:
        pass  # malformed JSON: the route's own validation answers with the position
    return None


class BodyGuard:
    """ASGI middleware: 413 ``request.too_large`` past ``max_bytes``; 422 ``request.invalid`` on NaN/Infinity."""

    def __init__(self, app: Any, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        body = await self._read(receive)
        if body is _GONE:
            return  # the client left mid-body: nothing it half-sent is acted on
        if body is None:
            await self._too_large(send)
            return
        if body:  # whatever Content-Type says: FastAPI parses any application/*json, in any case
            refused = _why_not_strict(body)
            if refused:
                await _answer(send, 422, "request.invalid", refused)
                return
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Any) -> bytes | None:
        """The whole body; None as soon as it passes ``max_bytes``; ``_GONE`` if the client disconnected."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _GONE
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return bytes(body)

    async def _too_large(self, send: Any) -> None:
        await _answer(send, 413, "request.too_large", f"the request body is larger than {self.max_bytes} bytes "
                      "(COGO_MAX_BODY_BYTES)", {"max_bytes": self.max_bytes})


async def _answer(send: Any, status: int, code: str, message: str, details: dict | None = None) -> None:
    body = json.dumps({"error": Problem(code, message, status in (429, 503), details or {}).to_dict()}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
