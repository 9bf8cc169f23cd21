"""Traces across real processes: the API, the brain, the dispatcher and a worker each export their spans over
OTLP/HTTP to a collector the test runs (it decodes the protobuf ``ExportTraceServiceRequest``), and they form one
trace per run — the trace context really crosses process boundaries in the ledger's rows. The fleet is configured
the way an environment set up for OpenTelemetry does it: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, a full traces URL
with a path of its own, which every process must use as it is."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

from bus import tracing
from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support import otel
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
trace_service = otel.require("opentelemetry.proto.collector.trace.v1.trace_service_pb2")  # a failure under CI=true
TRACES_PATH = "/otlp/spans"
"""Not ``/v1/traces``: the traces endpoint's own path, which no process may extend."""


@dataclass(frozen=True)
class Received:
    """One span as the collector received it."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict


class Collector:
    """An OTLP/HTTP traces endpoint on a free local port, keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service.ExportTraceServiceRequest.FromString(body)
                collector.add(request, self.path)
                answer = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.paths: set[str] = set()

    def add(self, request, path: str) -> None:
        with self.lock:
            self.paths.add(path)
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append(Received(
                            resource.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(),
                            s.parent_span_id.hex(), {a.key: _value(a.value) for a in s.attributes}))

    def of_trace(self, trace_id: str) -> list[Received]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    thread = threading.Thread(target=c.server.serve_forever, daemon=True)
    thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


def test_one_run_is_one_trace_across_the_api_brain_dispatcher_and_worker_processes(tmp_path, e2e_env, owned_redis,
                                                                                    collector):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url)
    env = {**e2e_env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url + TRACES_PATH,  # OpenTelemetry's variable
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}  # export every 0.1 s instead of every 5 s
    with Fleet(settings, only=[*CORE, "cogo-rag-embed"], processes=TABLE, free_ports=True, env=env,
               console=Console(quiet=True), show_logs=False) as fleet:
        with Client(fleet.api_url, api_key=fleet.api_key) as client:
            run_id = client.submit("embed", tenant="acme", payload={"documents": [{"id": "d1", "text": "traced"}]})
            assert client.wait(run_id, timeout_s=60)["status"] == "completed"
        trace_id = tracing.run_trace_id(run_id)
        wanted = {"cogo.run embed", "cogo.step start", "cogo.admit", "cogo.work rag.embed", "cogo.step task_completed"}
        wait_until(lambda: wanted <= {s.name for s in collector.of_trace(trace_id)}, timeout=30,
                   message="every process's spans of the run at the collector")
    spans = collector.of_trace(trace_id)
    assert collector.paths == {TRACES_PATH}
    assert {s.name: s.service for s in spans} == {
        "cogo.run embed": "orchestrator-chat", "cogo.step start": "cogo-orchestrator-brain",
        "cogo.admit": "cogo-executor-dispatcher", "cogo.work rag.embed": "cogo-rag-embed",
        "cogo.step task_completed": "cogo-orchestrator-brain"}
    by_id = {s.span_id: s for s in spans}
    step = next(s for s in spans if s.name == "cogo.step task_completed")
    names = []
    while step is not None:
        names.append(step.name)
        step = by_id.get(step.parent_id)
    assert names == ["cogo.step task_completed", "cogo.work rag.embed", "cogo.admit", "cogo.step start",
                     "cogo.run embed"]
    assert next(s for s in spans if s.name == "cogo.run embed").parent_id == ""  # the run's trace starts there
    assert all(s.attributes["cogo.run_id"] == run_id and s.attributes["cogo.tenant"] == "acme" for s in spans)
    work = next(s for s in spans if s.name == "cogo.work rag.embed")
    assert work.attributes["cogo.outcome"] == "done" and work.attributes["cogo.attempt"] == 1
    assert not any("traced" in repr(s.attributes) for s in spans)  # the payload's text is in no span
