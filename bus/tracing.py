"""Traces: each run a trace, each step a span, the context carried in the ledger rows (OpenTelemetry).

Off unless an endpoint is configured (``COGO_OTEL_ENDPOINT`` or ``COGO_OTEL_TRACES_ENDPOINT``, else OpenTelemetry's
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``: ``bus/settings.py``) and the SDK is
installed (``pip install 'cogo[otel]'``). Off, nothing here imports ``opentelemetry`` and a process pays one
``active() is None`` check per row it handles.

On, each process exports its spans over OTLP/HTTP (a ``BatchSpanProcessor``), and every row a span writes
carries that span's W3C ``traceparent`` in its payload (``TRACE_KEY``), so the process that handles the row next
opens its span as the child: ``cogo.run <intent>`` (the API) → ``cogo.step <event>`` (the brain) →
``cogo.admit`` (the dispatcher) → ``cogo.work <service.role>`` (the worker) → ``cogo.step task_completed`` → …

A run tree's trace id is its root run's id (``run_trace_id``): the API's root span takes it, so a row that carries
no context (a command from the API, a row written while tracing was off) still joins its run's trace. Spans
carry ids, names, counts and codes only: never payloads, outputs, error messages, secrets or keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the SDK is optional: never imported at run time unless tracing is on
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Span

    from bus.settings import Settings

log = logging.getLogger(__name__)

TRACE_KEY = "__traceparent"
"""The payload key of a ledger row that carries the W3C ``traceparent`` of the span that wrote (or last handed on)
the row. Brain events drop it before they are read (``coordinator.events.from_row``)."""
TRACES_PATH = "/v1/traces"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SAMPLED = 0x01


def traceparent_of(value: object) -> str | None:
    """``value`` when it is a well-formed W3C ``traceparent`` of version ``00`` (lower-case hex, neither id all
    zeros), else None: a malformed or hostile one is dropped, never raised."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None or int(match[1], 16) == 0 or int(match[2], 16) == 0:
        return None
    return value


def carried(payload: object) -> str | None:
    """The valid ``traceparent`` a row's payload carries, or None."""
    return traceparent_of(payload.get(TRACE_KEY)) if isinstance(payload, Mapping) else None


def carrying(payload: Mapping[str, Any], traceparent: str | None) -> dict[str, Any]:
    """``payload`` carrying ``traceparent`` (a new dict; the same payload when there is none to carry)."""
    if traceparent is None:
        return payload if isinstance(payload, dict) else dict(payload)
    return {**payload, TRACE_KEY: traceparent}


def run_trace_id(root_run_id: str) -> str:
    """The trace id of a run tree, 32 hex digits: its root run's id without the dashes (a run id is a random
    UUID), or a hash of an id that is not a UUID."""
    return f"{_trace_id(root_run_id):032x}"


def _trace_id(root_run_id: str) -> int:
    try:
        value = uuid.UUID(root_run_id).int
    except ValueError:
        value = int.from_bytes(hashlib.sha256(f"cogo-trace:{root_run_id}".encode()).digest()[:16], "big")
    return value or 1


def _root_span_id(root_run_id: str) -> int:
    """The span id of a run tree's root span (the API's ``cogo.run``), derived like its trace id."""
    return int.from_bytes(hashlib.sha256(f"cogo-root-span:{root_run_id}".encode()).digest()[:8], "big") or 1


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint given as a base URL (``http://collector:4318``, or with a path:
    ``http://gateway/otlp`` → ``http://gateway/otlp/v1/traces``, as the OpenTelemetry specification says of
    ``OTEL_EXPORTER_OTLP_ENDPOINT``) or as the traces URL itself (one ending with ``/v1/traces``)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def traces_endpoint(settings: Settings) -> str:
    """Where spans are sent: the traces URL itself (``otel_traces_endpoint``, used as it is, like
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), else the base URL's (``otel_endpoint``: ``traces_url``), else ""
    (tracing off)."""
    if settings.otel_traces_endpoint:
        return settings.otel_traces_endpoint
    return traces_url(settings.otel_endpoint) if settings.otel_endpoint else ""


def root_run_of(engine: Any, run_id: str | None, parent_run_id: str | None) -> str | None:
    """The root run of ``run_id``'s tree, for a span whose row carries no context (its parent is then the run
    tree's root span: ``Tracing.parent``). A run with no parent run (``parent_run_id`` None, as an assignment's
    payload says) is its own root: nothing is read. A child run's root is read from its ``runs`` row (the table
    ``bus/migrations`` creates): one statement, only then, and only with tracing on; the parent run, if that
    read fails."""
    if not run_id or parent_run_id is None:
        return run_id
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with engine.connect() as conn:
            root = conn.execute(text("SELECT root_run_id FROM runs WHERE id = :id"), {"id": run_id}).scalar()
    except SQLAlchemyError as exc:
        log.debug("tracing: the root run of %s is unknown (%s); its parent's is used", run_id, type(exc).__name__)
        return parent_run_id
    return root or parent_run_id


def _shown(endpoint: str) -> str:
    """What a log line may show of an endpoint that may carry credentials: scheme, host and port."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}"


class Ingress:
    """The root span of a run the API may create (``Tracing.ingress``). The run's id is chosen first (the trace id
    and the span id derive from it); the span itself opens when the request turns out to create that run — when
    ``traceparent``, which goes into the run's start event, is first read — with the request's start as its
    start, and is current from then on. A request answered with an earlier run (an idempotent retry) opens no root
    span: ``created`` records it as a ``cogo.ingress`` span under the earlier run's ``cogo.run`` span, in that
    run's trace. A refused request's span opens when it fails, in a trace of its own."""

    def __init__(self, tracer: Tracing, *, tenant: str, links: list[Any] | None):
        self.run_id = str(uuid.uuid4())
        self.span: Span | None = None
        self._tracer, self._tenant, self._links = tracer, tenant, links
        self._started, self._token = tracer.clock_ns(), None

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` of the new run's root span (opened by this read)."""
        return traceparent(self.open())

    def open(self, earlier_run_id: str | None = None) -> Span:
        """The request's span (``cogo.ingress``), opened if it is not yet: the new run's root span, or, given
        ``earlier_run_id``, a child of that run's root span."""
        if self.span is not None:
            return self.span
        t, token = self._tracer, None
        if earlier_run_id is None:
            token = t._ids.next.set((_trace_id(self.run_id), _root_span_id(self.run_id)))
        try:
            self.span = t._tracer.start_span(
                "cogo.ingress", context=t.parent(None, earlier_run_id) if earlier_run_id else t._context(),
                kind=t._kinds["server"], attributes={"cogo.tenant": self._tenant}, links=self._links,
                start_time=self._started)
        finally:
            if token is not None:
                t._ids.next.reset(token)
        from opentelemetry import context

        self._token = context.attach(t._api.set_span_in_context(self.span))
        return self.span

    def created(self, run_id: str, *, intent: str) -> None:
        """The request was answered with ``run_id``: the run it created (the span becomes ``cogo.run <intent>``),
        or an earlier one an idempotent retry replayed (``cogo.replayed``; the span stays ``cogo.ingress``)."""
        replayed = run_id != self.run_id
        span = self.open(run_id if replayed else None)
        if not replayed:
            span.update_name(f"cogo.run {intent}")
        span.set_attributes({"cogo.run_id": run_id, "cogo.intent": intent, "cogo.replayed": replayed})

    def close(self) -> None:
        """End the span, if it opened, and restore the context the request had."""
        if self._token is not None:
            from opentelemetry import context

            context.detach(self._token)
            self._token = None
        if self.span is not None:
            self.span.end()


class Tracing:
    """A process's tracer: opens spans parented to the context a row carries, and says what to carry on."""

    def __init__(self, provider: TracerProvider, ids: _RunIds):
        from opentelemetry import trace
        from opentelemetry.context import Context

        self.provider, self._ids = provider, ids
        self._tracer = provider.get_tracer("cogo")
        self._api, self._context = trace, Context
        kind = trace.SpanKind
        self._kinds = {"internal": kind.INTERNAL, "server": kind.SERVER, "consumer": kind.CONSUMER}

    clock_ns = staticmethod(time.time_ns)
    """The time a span opened later should say it started (before the row was taken)."""

    def parent(self, carrier: str | None, root_run_id: str | None) -> Any:
        """The context a span opens under: the carried ``traceparent``, else the root span of the run tree
        ``root_run_id`` (its ids are derived from the run), else none (a trace of its own)."""
        traceparent, api = traceparent_of(carrier), self._api
        if traceparent is not None:
            ids = int(traceparent[3:35], 16), int(traceparent[36:52], 16), int(traceparent[53:], 16)
        elif root_run_id:
            ids = _trace_id(root_run_id), _root_span_id(root_run_id), _SAMPLED
        else:
            return self._context()
        remote = api.SpanContext(ids[0], ids[1], is_remote=True, trace_flags=api.TraceFlags(ids[2]))
        return api.set_span_in_context(api.NonRecordingSpan(remote), self._context())

    @contextlib.contextmanager
    def span(self, name: str, *, carrier: str | None, root_run_id: str | None, run_id: str | None, tenant: str | None,
             node: str | None = None, kind: str = "consumer", start_ns: int | None = None,
             attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
        """A span ``name`` under the carried context (``parent``), current while the block runs; an exception that
        leaves the block marks it an error, with the exception's code (``CogoError.code``) or type as the
        description, never its message."""
        values = {"cogo.run_id": run_id, "cogo.tenant": tenant, "cogo.node": node, **(attributes or {})}
        span = self._tracer.start_span(name, context=self.parent(carrier, root_run_id), kind=self._kinds[kind],
                                       attributes={k: v for k, v in values.items() if v is not None},
                                       start_time=start_ns)
        try:
            with self._api.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                yield span
        except BaseException as exc:
            fail(span, getattr(exc, "code", None) or type(exc).__name__)
            raise
        finally:
            span.end()

    @contextlib.contextmanager
    def ingress(self, *, tenant: str) -> Iterator[Ingress]:
        """A request that may create a run: its span (``Ingress``), ``cogo.ingress`` until the run is recorded
        (then ``cogo.run <intent>``), with a fresh run id the span's ids derive from. A span current in the caller
        (an instrumented HTTP server's) is linked, not made the parent: each run is a trace of its own. A request
        that fails is an error described by its code."""
        current = self._api.get_current_span().get_span_context()
        ingress = Ingress(self, tenant=tenant, links=[self._api.Link(current)] if current.is_valid else None)
        try:
            yield ingress
        except BaseException as exc:
            fail(ingress.open(), getattr(exc, "code", None) or type(exc).__name__)
            raise
        finally:
            ingress.close()

    def shutdown(self) -> None:
        """Export what is buffered and stop."""
        self.provider.shutdown()


def fail(span: Span, code: str) -> None:
    """Mark ``span`` an error described by a stable code (``work.exception``, ``budget.exceeded`` …)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, str(code)[:128]))


def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` of ``span``: what a row it writes carries."""
    c = span.get_span_context()
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


class _RunIds:
    """The ids of new spans: random, except the root span of a run, whose ids derive from the run's id (set in
    ``next`` while ``Tracing.ingress`` opens it). Wrapped as an SDK ``IdGenerator`` by ``_provider``."""

    def __init__(self) -> None:
        self.next: ContextVar[tuple[int, int] | None] = ContextVar("cogo_next_run_ids", default=None)


def _provider(service: str, processor: SpanProcessor, resource: Mapping[str, Any] | None = None
              ) -> tuple[TracerProvider, _RunIds]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    ids = _RunIds()

    class RunIdGenerator(RandomIdGenerator):
        def generate_trace_id(self) -> int:
            chosen = ids.next.get()
            return chosen[0] if chosen else super().generate_trace_id()

        def generate_span_id(self) -> int:
            chosen = ids.next.get()
            return chosen[1] if chosen else super().generate_span_id()

    attributes = {"service.name": service, "service.namespace": "cogo", **(resource or {})}
    provider = TracerProvider(resource=Resource.create(attributes), id_generator=RunIdGenerator())
    provider.add_span_processor(processor)
    return provider, ids


_active: Tracing | None = None


def active() -> Tracing | None:
    """This process's tracer, or None when tracing is off (the one check the hot path pays)."""
    return _active


def setup(settings: Settings, *, service: str) -> Tracing | None:
    """Turn tracing on for this process (``service``: its name in the process table) when ``settings`` name an
    endpoint and the SDK is installed; spans go out in batches over OTLP/HTTP, and what is buffered is exported
    when the process exits. Returns the tracer, or None (off). Calling it again returns the tracer it made."""
    global _active
    url = traces_endpoint(settings)
    if _active is not None or not url:
        return _active
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("tracing is off: an OpenTelemetry endpoint is set but the SDK is missing (%s); "
                    "install it with: pip install 'cogo[otel]'", exc.name)
        return None
    import os
    import socket

    resource = {"service.instance.id": f"{socket.gethostname()}:{os.getpid()}", "service.version": _version()}
    if settings.shard >= 0:
        resource["cogo.shard"] = settings.shard
    exporter = OTLPSpanExporter(endpoint=url)
    provider, ids = _provider(service, BatchSpanProcessor(exporter), resource)
    _active = Tracing(provider, ids)
    log.info("tracing: %s exports spans to %s", service, _shown(url))
    return _active


def install(processor: SpanProcessor, *, service: str = "cogo") -> Tracing:
    """Turn tracing on with ``processor`` (tests: a ``SimpleSpanProcessor`` over an ``InMemorySpanExporter``),
    replacing the tracer this process had."""
    global _active
    uninstall()
    _active = Tracing(*_provider(service, processor))
    return _active


def in_memory(*, service: str = "cogo-test") -> InMemorySpanExporter:
    """Turn tracing on with every span kept in memory as it ends; returns the exporter that holds them."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    install(SimpleSpanProcessor(exporter), service=service)
    return exporter


def uninstall() -> None:
    """Turn tracing off, exporting what is buffered first."""
    global _active
    tracer, _active = _active, None
    if tracer is not None:
        tracer.shutdown()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cogo")
    except PackageNotFoundError:
        return "unknown"
