"""``GET /api/stream``: server-sent events for live views — new trace events, approval changes, run statuses.

Authenticated like every route (``Authorization: Bearer``: a browser reads it with ``fetch`` and a stream reader,
since ``EventSource`` cannot send headers) and filtered by tenant on the server (``coordinator/live.py``). One
connection costs no thread while it waits: each read of the ledger borrows a worker thread for a few short, bounded
statements, then the stream sleeps on the event loop. It sends a heartbeat every ``HEARTBEAT_S`` (checking the key
again, so a revoked key's stream ends), ends after ``MAX_STREAM_S`` (the client reconnects where it was) or as soon
as the client leaves; at most ``MAX_STREAMS`` run at once in one process (503 ``stream.busy`` past that) and
``MAX_STREAMS_PER_PRINCIPAL`` of one principal (429 ``stream.too_many``).

Resuming: a frame's ``id`` is the stream's low mark once the client has that frame — every event up to it is
behind the client (``live.Batch.resume_id``). ``Last-Event-ID`` (or ``?after_id=``) resumes from it: the stream
tells every event above it that the key may see, so an event that committed late (ids commit out of order on
PostgreSQL) is not lost; one the client already had may come again, with the same event id, and the client drops it.

Frames: ``hello`` (``{cursor, …}``: the low mark it starts from), ``trace`` (an introspection event), ``approval``
(``{run_id, change: requested|resolved, approval_id, event_id}``), ``run`` (``{run_id, status, …}``), ``heartbeat``
(``{at, cursor}``), ``bye`` (its time is up: reconnect) — each with an ``id`` — and ``error`` (``{code, message}``,
no ``id``; then the stream ends).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from bus.cursor import Position
from bus.errors import CogoError, InvalidRequest
from coordinator import live
from coordinator.api.auth import authenticate_request, owned_run, scoped
from coordinator.api.deps import Services, services
from coordinator.api.errors import error_response
from coordinator.keys import Principal

router = APIRouter()

HEARTBEAT_S = 15.0
POLL_S = 1.0
"""How long a stream sleeps when a read found nothing more to tell."""
MAX_STREAM_S = 600.0
MAX_STREAMS = 64
MAX_STREAMS_PER_PRINCIPAL = 8
"""One key's streams at once in one process (tabs of a person, a script), so it cannot take every slot."""
MAX_ID = 2**63 - 1
"""The largest event id a ledger can hold (a signed 64-bit integer): no cursor may be larger."""


class StreamSlots:
    """How many streams this process has open, in all and per principal (one event loop: no lock needed)."""

    def __init__(self, limit: int, per_principal: int = MAX_STREAMS_PER_PRINCIPAL):
        self.limit = limit
        self.per_principal = per_principal
        self.open = 0
        self.held: Counter[Hashable] = Counter()

    def take(self, who: Hashable) -> str | None:
        """Open one more stream for ``who``; None when the limits allow, else the error code that refuses it."""
        if self.held[who] >= self.per_principal:
            return "stream.too_many"
        if self.open >= self.limit:
            return "stream.busy"
        self.open += 1
        self.held[who] += 1
        return None

    def give(self, who: Hashable) -> None:
        """A stream of ``who`` ended."""
        self.open = max(0, self.open - 1)
        self.held[who] -= 1
        if self.held[who] <= 0:
            del self.held[who]


SLOTS = StreamSlots(MAX_STREAMS)
"""This process's streams."""


class EventStream(StreamingResponse):
    """A ``text/event-stream`` answer that gives its slot back however it ends (done, failed or cancelled)."""

    def __init__(self, frames: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(frames, media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def frame(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    """One SSE frame; the data is one line of JSON (``json.dumps`` escapes every newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def resume_from(last_event_id: str | None, after_id: int | None) -> int | None:
    """The low mark a client resumes from: ``Last-Event-ID`` (what a reconnecting client sends), else ``after_id``.

    Raises:
        InvalidRequest: ``Last-Event-ID`` is not a decimal id from 0 to 2**63-1.
    """
    if last_event_id is None or not last_event_id.strip():
        return after_id
    text = last_event_id.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
        raise InvalidRequest(f"Last-Event-ID must be an event id from 0 to {MAX_ID}",
                             details={"field": "Last-Event-ID"})
    return int(text)


def _principal_key(who: Principal) -> tuple[str, str]:
    return who.tenant, who.name


@router.get("/api/stream", include_in_schema=False)
async def stream(request: Request, run_id: str | None = Query(None, min_length=1, max_length=64),
                 after_id: int | None = Query(None, ge=0, le=MAX_ID),
                 last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=32),
                 s: Services = Depends(services), who: Principal = Depends(scoped("runs:read"))) -> Any:
    """Server-sent events of what changes in the runs the caller may see (one run's, with ``run_id``)."""
    low = resume_from(last_event_id, after_id)

    def place() -> Position:
        with s.engine.connect() as conn:
            if run_id is not None:
                owned_run(conn, run_id, who)
            return live.start(conn, now=time.time(), run_id=run_id) if low is None else live.resume(conn, low)
    position = await run_in_threadpool(place)
    holder, slots = _principal_key(who), SLOTS
    refused = slots.take(holder)
    if refused == "stream.too_many":
        return error_response(refused, f"this key already has {slots.per_principal} live streams open in this "
                              "API process; close one", 429, headers={"Retry-After": "5"})
    if refused is not None:
        return error_response(refused, f"this API process already serves {slots.limit} live streams; "
                              "try again shortly", 503, headers={"Retry-After": "5"})
    return EventStream(_frames(request, s, who, run_id=run_id, position=position), lambda: slots.give(holder))


async def _frames(request: Request, s: Services, who: Principal, *, run_id: str | None,
                  position: Position) -> AsyncIterator[str]:
    tenant = None if who.is_admin else who.tenant
    seen = live.Seen()
    started = beat = time.monotonic()
    yield frame("hello", {"cursor": position.low_id, "heartbeat_s": HEARTBEAT_S, "run_id": run_id,
                          "tenant": tenant}, position.low_id)

    def read(at: Position) -> live.Batch:
        with s.engine.connect() as conn:
            return live.read_changes(conn, at, tenant=tenant, run_id=run_id, seen=seen, now=time.time())

    def still_valid() -> None:
        authenticate_request(request, s.engine, s.settings).require("runs:read")

    while not await request.is_disconnected():
        try:
            batch = await run_in_threadpool(read, position)
            if time.monotonic() - beat >= HEARTBEAT_S:
                await run_in_threadpool(still_valid)
        except CogoError as exc:
            yield frame("error", {"code": exc.code, "message": str(exc)})
            return
        except DBAPIError:
            yield frame("error", {"code": "ledger.unavailable", "message": "the ledger cannot answer right now"})
            return
        for change in batch.changes:
            yield frame(change.kind, change.data, batch.resume_id(change))
        position = batch.position
        now = time.monotonic()
        if now - beat >= HEARTBEAT_S:
            beat = now
            yield frame("heartbeat", {"at": time.time(), "cursor": position.low_id}, position.low_id)
        if now - started >= MAX_STREAM_S:
            yield frame("bye", {"cursor": position.low_id, "reason": "reconnect with Last-Event-ID"},
                        position.low_id)
            return
        if not batch.full:
            await asyncio.sleep(POLL_S)
