"""Traces (``bus/tracing.py``): a run through the real API, brain, dispatcher and worker runtime, in-process on
SQLite and PostgreSQL, with every span kept by the SDK's in-memory exporter — one trace per run, each step a span
parented to the context its row carried; and, with tracing off, no trace context written and no OpenTelemetry
module imported by the hot path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

from bus import tracing
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, TASK_WORK
from bus.envelope import AssignmentEnvelope, Intent
from bus.errors import ConfigError, WorkFailed
from bus.schema import agent_messages
from bus.settings import Settings
from coordinator import intents
from coordinator.admission import ADMIT, defer
from tests.support import otel
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, registry_of, run_row, settle, submit
from workers.handler import WorkResult

otel.require("opentelemetry.sdk.trace")  # skipped without the otel extra, failed under CI=true

ROOT = Path(__file__).resolve().parents[2]
SECRET = "payload-secret-7f3a"
"""Put in every payload and output: no span may carry it."""

TRACED = """
name: traced
start: first
nodes:
  first: {kind: task, route: {service: t, role: a}, agent: {agent_id: w}, output: one, next: second,
          retry: {maximum_attempts: 2, initial_interval_ms: 100, jitter: 0.0}}
  second: {kind: task, route: {service: t, role: b}, agent: {agent_id: w}, output: two, next: split}
  split: {kind: parallel, branches: [x, y], join: merge}
  x: {kind: task, route: {service: t, role: c}, agent: {agent_id: w}, output: out, next: merge}
  y: {kind: task, route: {service: t, role: c}, agent: {agent_id: w}, output: out, next: merge}
  merge: {kind: join, mode: all, next: done}
  done: {kind: end}
"""


def handlers() -> dict:
    attempts = []

    def flaky(ctx, payload):  # the first attempt fails and is retried
        ctx.meter(tokens=5, cost_usd=0.01)
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise WorkFailed(f"busy {SECRET}", retryable=True)
        return WorkResult(output={"secret": SECRET})

    def steady(ctx, payload):
        ctx.meter(tokens=3)
        return WorkResult(output={"secret": SECRET, "node": ctx.node_id})

    return {("t", "a"): flaky, ("t", "b"): steady, ("t", "c"): steady}


@pytest.fixture
def spans():
    """Tracing on in this process, every ended span kept in memory; off again afterwards."""
    exporter = tracing.in_memory()
    yield exporter
    tracing.uninstall()


def post_intent(fleet: Fleet, intent: str = "traced") -> tuple[str, str]:
    """Start a run through ``POST /api/intents``; returns its id and the key used."""
    key = make_key(fleet.engine, "acme")
    answer = http(app_of(fleet), key).post("/api/intents", json={"tenant": "acme", "intent": intent,
                                                                 "payload": {"note": SECRET}})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"], key


def chain(span, by_id) -> list[str]:
    """The names from ``span`` up to the root, following parents."""
    names = []
    while span is not None:
        names.append(span.name)
        span = by_id.get(span.parent.span_id) if span.parent is not None else None
    return names


def test_a_run_is_one_trace_and_each_step_admission_and_attempt_a_span_under_the_one_before(engine, spans):
    fleet = Fleet(engine, handlers(), registry=registry_of(TRACED), batched=True, brain_batch_after_s=0.0)
    run_id, key = post_intent(fleet)
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"

    ended = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in ended}
    assert {f"{s.context.trace_id:032x}" for s in ended} == {tracing.run_trace_id(run_id)}  # one trace: the run's
    assert tracing.run_trace_id(run_id) == run_id.replace("-", "")
    assert sorted(s.name for s in ended) == sorted(
        ["cogo.run traced", "cogo.step start", "cogo.admit", "cogo.work t.a", "cogo.admit", "cogo.work t.a",
         "cogo.step task_completed", "cogo.admit", "cogo.work t.b", "cogo.step task_completed",
         "cogo.admit", "cogo.admit", "cogo.work t.c", "cogo.work t.c", "cogo.step task_completed",
         "cogo.step task_completed"])
    [root] = [s for s in ended if s.parent is None]
    assert root.name == "cogo.run traced" and root.kind.name == "SERVER"
    assert root.attributes["cogo.run_id"] == run_id and root.attributes["cogo.replayed"] is False
    assert all(s.parent.span_id in by_id for s in ended if s.parent is not None)  # no orphan

    # ingress → step → admit → work (failed) → admit → work → step → admit → work → step → admit → work → step
    x_done = next(s for s in ended if s.name == "cogo.step task_completed" and s.attributes.get("cogo.node") == "x")
    assert chain(x_done, by_id) == [
        "cogo.step task_completed", "cogo.work t.c", "cogo.admit", "cogo.step task_completed", "cogo.work t.b",
        "cogo.admit", "cogo.step task_completed", "cogo.work t.a", "cogo.admit", "cogo.work t.a", "cogo.admit",
        "cogo.step start", "cogo.run traced"]
    # The fan-out: both branches' admissions (one dispatcher batch) are children of the step that forked them.
    forked = [s for s in ended if s.name == "cogo.admit" and s.attributes["cogo.node"] in ("x", "y")]
    assert len({s.parent.span_id for s in forked}) == 1 and by_id[forked[0].parent.span_id].attributes[
        "cogo.node"] == "second"
    assert any(len(ids) > 1 for ids in fleet.publisher.batch_of.values()), "the fan-out was admitted as one batch"
    assert (TASK_DECIDE, "duplicate") in {(task, outcome) for task, _, outcome in fleet.trace}, \
        "a brain transaction applied both branches' outcomes (the second one's message found it applied)"

    for s in ended:
        assert s.attributes["cogo.run_id"] == run_id and s.attributes["cogo.tenant"] == "acme", s.name
    attempts = sorted((s for s in ended if s.name == "cogo.work t.a"), key=lambda s: s.attributes["cogo.attempt"])
    failed, passed = attempts
    assert failed.status.status_code.name == "ERROR" and failed.status.description == "work.failed"
    assert (failed.attributes["cogo.outcome"], passed.attributes["cogo.outcome"]) == ("retry", "done")
    assert passed.status.status_code.name == "UNSET"
    assert {k: passed.attributes[k] for k in ("cogo.node", "cogo.route", "cogo.model", "cogo.tokens",
                                              "cogo.cost_usd", "cogo.attempt")} == {
        "cogo.node": "first", "cogo.route": "t.a", "cogo.model": "cogo-local", "cogo.tokens": 5,
        "cogo.cost_usd": 0.01, "cogo.attempt": 2}
    assert failed.attributes["cogo.assignment_id"] == passed.attributes["cogo.assignment_id"]
    assert {s.attributes["cogo.outcome"] for s in ended if s.name == "cogo.admit"} == {"dispatched"}

    text = json.dumps([json.loads(s.to_json()) for s in ended])
    assert SECRET not in text and key not in text  # ids, names, counts and codes only


CHILD = """
name: child
start: work
nodes:
  work: {kind: task, route: {service: t, role: c}, agent: {agent_id: w}, output: out, next: done}
  done: {kind: end}
"""
PARENT = """
name: parent
start: down
nodes:
  down: {kind: subworkflow, workflow: child, next: done}
  done: {kind: end}
"""


def test_a_child_run_is_part_of_its_root_runs_trace(sqlite_engine, spans):
    fleet = Fleet(sqlite_engine, handlers(), registry=registry_of(PARENT, CHILD))
    run_id, _ = post_intent(fleet, "parent")
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"
    ended = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in ended}
    assert {f"{s.context.trace_id:032x}" for s in ended} == {tracing.run_trace_id(run_id)}
    [last] = [s for s in ended if s.name == "cogo.step child_completed"]
    assert chain(last, by_id) == ["cogo.step child_completed", "cogo.step task_completed", "cogo.work t.c",
                                  "cogo.admit", "cogo.step start", "cogo.step start", "cogo.run parent"]
    child_id = by_id[last.parent.span_id].attributes["cogo.run_id"]
    assert child_id != run_id and last.attributes["cogo.run_id"] == run_id
    assert run_row(fleet, child_id)["parent_run_id"] == run_id


MIDDLE = """
name: middle
start: work
nodes:
  work: {kind: task, route: {service: t, role: c}, agent: {agent_id: w}, output: out, next: down}
  down: {kind: subworkflow, workflow: child, next: done}
  done: {kind: end}
"""
TOP = """
name: top
start: down
nodes:
  down: {kind: subworkflow, workflow: middle, next: done}
  done: {kind: end}
"""


def test_a_worker_given_no_context_parents_its_span_to_the_root_span_of_its_run_tree(sqlite_engine, spans,
                                                                                    monkeypatch):
    # Only the worker traces (the brain and the dispatcher had tracing off): the assignments of a child run
    # (top → middle) and of a grandchild run (middle → child) carry no context, and each attempt's span must
    # still join the root run's trace, under its root span — not open a trace of the child's own.
    tracer = tracing.active()
    working = [False]
    monkeypatch.setattr(tracing, "active", lambda: tracer if working[0] else None)
    fleet = Fleet(sqlite_engine, handlers(), registry=registry_of(TOP, MIDDLE, CHILD))
    root_id = submit(fleet, "top")
    while (nxt := fleet.publisher.pop()) is not None:
        due, delivery = nxt
        fleet.clock.now = max(fleet.clock.now, due)
        working[0] = delivery.task == TASK_WORK
        fleet.deliver(delivery)
    assert run_row(fleet, root_id)["status"] == "completed"

    work = spans.get_finished_spans()
    assert [s.name for s in work] == ["cogo.work t.c", "cogo.work t.c"]
    middle_id, child_id = (s.attributes["cogo.run_id"] for s in work)
    assert run_row(fleet, middle_id)["parent_run_id"] == root_id
    assert run_row(fleet, child_id)["parent_run_id"] == middle_id
    for s in work:
        assert f"{s.context.trace_id:032x}" == tracing.run_trace_id(root_id), s.attributes["cogo.run_id"]
        assert s.parent.trace_id == s.context.trace_id and s.parent.span_id == tracing._root_span_id(root_id)


class Stubborn:
    """An admission policy that defers its first ``times`` asks (the same wait each time), then admits."""

    name = "stubborn"

    def __init__(self, times: int):
        self.times, self.asked = times, 0

    def check(self, ask):
        self.asked += 1
        return defer("test.stubborn", "not yet") if self.asked <= self.times else ADMIT


def test_an_assignment_deferred_again_and_again_adds_one_span_for_its_wait_not_one_per_recheck(sqlite_engine,
                                                                                              spans):
    fleet = Fleet(sqlite_engine, handlers(), registry=registry_of(CHILD))
    fleet.dispatcher.policies.insert(0, Stubborn(4))
    run_id = submit(fleet, "child")
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"
    assert [o for task, _, o in fleet.trace if task == TASK_EXECUTE].count("deferred") == 4  # re-checked 4 times

    ended = spans.get_finished_spans()
    admits = sorted((s for s in ended if s.name == "cogo.admit"), key=lambda s: s.start_time)
    assert [(s.attributes["cogo.outcome"], s.attributes.get("cogo.verdict")) for s in admits] == [
        ("deferred", "test.stubborn"), ("dispatched", None)]  # the wait's start, and the admission that ended it
    waited = admits[1]
    assert waited.attributes["cogo.waited_for"] == "test.stubborn" and waited.attributes["cogo.waited_s"] > 0
    assert "cogo.waited_for" not in admits[0].attributes and admits[0].status.status_code.name == "UNSET"
    [step] = [s for s in ended if s.name == "cogo.step start"]
    assert {s.parent.span_id for s in admits} == {step.context.span_id}  # both under the step that dispatched it
    [work] = [s for s in ended if s.name == "cogo.work t.c"]
    assert work.parent.span_id == waited.context.span_id


def test_an_idempotent_retry_is_an_ingress_span_in_the_runs_trace_not_a_second_run(sqlite_engine, spans):
    fleet = Fleet(sqlite_engine, handlers(), registry=registry_of(TRACED))
    client = http(app_of(fleet), make_key(sqlite_engine, "acme"))
    body = {"tenant": "acme", "intent": "traced", "payload": {"note": SECRET}}
    first = client.post("/api/intents", json=body, headers={"Idempotency-Key": "retry-1"})
    again = client.post("/api/intents", json=body, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    run_id = first.json()["id"]

    root, replay = spans.get_finished_spans()  # nothing was drained: the two requests' spans only
    assert (root.name, replay.name) == ("cogo.run traced", "cogo.ingress")
    assert f"{root.context.trace_id:032x}" == tracing.run_trace_id(run_id) and root.parent is None
    assert root.attributes["cogo.replayed"] is False
    assert dict(replay.attributes) == {"cogo.tenant": "acme", "cogo.run_id": run_id, "cogo.intent": "traced",
                                       "cogo.replayed": True}
    assert replay.kind.name == "SERVER" and replay.status.status_code.name == "UNSET"
    # In the run's trace, under its root span: the retry is seen with the run it answered.
    assert replay.context.trace_id == root.context.trace_id and replay.parent.span_id == root.context.span_id


def test_a_denied_admission_is_an_error_span_and_the_failure_it_reports_its_child(sqlite_engine, spans):
    settings = Settings(broker_url="memory://", policy_file=Path("/dev/null"), allowed_models="not-this-one").checked()
    fleet = Fleet(sqlite_engine, handlers(), registry=registry_of(TRACED), settings=settings)
    run_id, _ = post_intent(fleet)
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "failed"
    ended = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in ended}
    [admit] = [s for s in ended if s.name == "cogo.admit"]
    assert (admit.attributes["cogo.outcome"], admit.attributes["cogo.verdict"]) == ("denied", "policy.model_denied")
    assert admit.status.status_code.name == "ERROR" and admit.status.description == "policy.model_denied"
    [failed] = [s for s in ended if s.name == "cogo.step task_failed"]
    assert chain(failed, by_id) == ["cogo.step task_failed", "cogo.admit", "cogo.step start", "cogo.run traced"]
    assert not [s for s in ended if s.name.startswith("cogo.work")]


def test_a_refused_intent_leaves_an_ingress_span_with_its_error_code_and_nothing_else(sqlite_engine, spans):
    fleet = Fleet(sqlite_engine, handlers(), registry=registry_of(TRACED))
    refused = http(app_of(fleet), make_key(sqlite_engine, "acme")).post(
        "/api/intents", json={"tenant": "acme", "intent": "no-such-intent", "payload": {}})
    assert refused.status_code == 404
    [ingress] = spans.get_finished_spans()
    assert ingress.name == "cogo.ingress" and ingress.status.description == "intent.unknown"
    assert dict(ingress.attributes) == {"cogo.tenant": "acme"}


def test_a_step_with_no_context_joins_its_run_trace_under_the_run_span(engine, spans):
    fleet = Fleet(engine, handlers(), registry=registry_of(TRACED))
    run_id, key = post_intent(fleet)
    settle(fleet)  # the first attempt failed; its retry waits out its backoff
    cancelled = http(app_of(fleet), key).post(f"/api/runs/{run_id}/cancel", json={"reason": "enough"})
    assert cancelled.status_code == 202, cancelled.text
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "cancelled"

    ended = spans.get_finished_spans()
    [root] = [s for s in ended if s.parent is None]
    [cancel] = [s for s in ended if s.name == "cogo.step cancel"]  # the API's command carries no context
    assert cancel.context.trace_id == root.context.trace_id and cancel.parent.span_id == root.context.span_id


TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
HOSTILE = ["garbage", f"00-{'0' * 32}-{SPAN_ID}-01", f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
           f"ff-{TRACE_ID}-{SPAN_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01", f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
           f" 00-{TRACE_ID}-{SPAN_ID}-01"[:55], f"00-{TRACE_ID}-{SPAN_ID}-0g", 12, {"trace": "x"}, ["00"], None]
"""Malformed carriers (a hostile or corrupt payload), and none at all."""


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_malformed_trace_context_in_a_row_is_ignored_never_raised(sqlite_engine, spans, hostile):
    fleet = Fleet(sqlite_engine, handlers(), registry=registry_of(TRACED))
    definition = intents.resolve("traced", fleet.registry)
    with sqlite_engine.begin() as conn:
        run_id, delivery = intents.create_run(conn, Intent(tenant="acme", intent="traced"), definition,
                                              now=fleet.clock(), shards=1, traceparent=hostile)
    fleet.publisher.send([delivery])
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"  # the event was applied, not rejected
    [start] = [s for s in spans.get_finished_spans() if s.name == "cogo.step start"]
    assert f"{start.context.trace_id:032x}" == tracing.run_trace_id(run_id)  # the run's trace, not the payload's
    assert tracing.traceparent_of(hostile) is None
    assert AssignmentEnvelope.of({"__assignment": {"agent_id": "w"}, tracing.TRACE_KEY: hostile}).traceparent is None


def test_a_valid_carried_context_is_kept_on_the_wire_and_read_back():
    good = f"00-{TRACE_ID}-{SPAN_ID}-01"
    envelope = AssignmentEnvelope({"agent_id": "w"}, traceparent=good)
    assert envelope.wire()[tracing.TRACE_KEY] == good
    assert AssignmentEnvelope.of(envelope.wire()) == envelope
    assert tracing.TRACE_KEY not in AssignmentEnvelope({"agent_id": "w"}).wire()  # off: the payload is unchanged


def test_with_tracing_off_no_row_carries_a_trace_context(engine):
    assert tracing.active() is None
    fleet = Fleet(engine, handlers(), registry=registry_of(TRACED))
    run_id, _ = post_intent(fleet)
    fleet.drain()
    with engine.connect() as conn:
        payloads = conn.execute(select(agent_messages.c.payload).where(agent_messages.c.run_id == run_id)).scalars()
        assert not [p for p in payloads if tracing.TRACE_KEY in p]
    assert run_row(fleet, run_id)["status"] == "completed"


OFF_PROBE = """
import sys
import tempfile

def otel():
    return {m for m in sys.modules if m.split(".")[0] == "opentelemetry"}

import bus.tracing
assert otel() == set(), sorted(otel())  # bus.tracing itself imports nothing of OpenTelemetry
from bus.db import make_engine
from bus.migrate import upgrade
from bus.settings import Settings
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, registry_of, run_row
from tests.integration.test_tracing import TRACED, handlers
from ecosystem import cli  # the composition root, which calls tracing.setup
before = otel()  # what the dependencies import of it themselves (redis may import its metrics API)
assert bus.tracing.setup(Settings(), service="probe") is None and bus.tracing.active() is None
engine = make_engine(f"sqlite:///{tempfile.mkdtemp()}/ledger.db")
upgrade(engine)
fleet = Fleet(engine, handlers(), registry=registry_of(TRACED))
run = http(app_of(fleet), make_key(engine, "acme")).post(
    "/api/intents", json={"tenant": "acme", "intent": "traced", "payload": {}}).json()["id"]
fleet.drain()
assert run_row(fleet, run)["status"] == "completed"
print(sorted(otel() - before))
"""


def test_with_tracing_off_the_hot_path_imports_no_opentelemetry_module():
    # FastAPI imports opentelemetry's context API and redis its metrics API when they are installed: the probe
    # counts what a whole run through the API, brain, dispatcher and worker adds on top of what they import.
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(OFF_PROBE)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


MISSING_SDK = """
import logging, sys
sys.modules["opentelemetry.sdk.trace.export"] = None  # as if the otel extra were not installed
logging.basicConfig(level=logging.WARNING)
from bus import tracing
from bus.celery_app import TASK_DECIDE
from bus.settings import Settings
assert tracing.setup(Settings(otel_endpoint="http://127.0.0.1:4318"), service="probe") is None
assert tracing.active() is None
"""


def test_an_endpoint_without_the_sdk_leaves_tracing_off_and_says_how_to_install_it():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(MISSING_SDK)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "pip install 'cogo[otel]'" in done.stderr


def test_the_endpoint_is_cogos_else_opentelemetrys_own_variable_and_checked():
    assert Settings.from_env({}).otel_endpoint == ""
    assert Settings.from_env({"COGO_OTEL_ENDPOINT": "http://a:4318"}).otel_endpoint == "http://a:4318"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://b:4318"}).otel_endpoint == "https://b:4318"
    assert Settings.from_env({"COGO_OTEL_ENDPOINT": "http://a:4318",
                              "OTEL_EXPORTER_OTLP_ENDPOINT": "http://b:4318"}).otel_endpoint == "http://a:4318"
    assert Settings.from_env({"COGO_OTEL_ENDPOINT": "http://a:4318", "OTEL_SDK_DISABLED": "true"}).otel_endpoint == ""
    with pytest.raises(ConfigError, match="COGO_OTEL_ENDPOINT") as refused:
        Settings.from_env({"COGO_OTEL_ENDPOINT": "grpc://user:hunter2@collector:4317"})
    assert "hunter2" not in str(refused.value)
    assert tracing.traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
    assert tracing._shown("https://user:pw@c:4318/v1/traces") == "https://c:4318"


def test_opentelemetrys_traces_endpoint_is_used_as_it_is_and_the_base_one_gets_the_traces_path():
    def url(env):
        return tracing.traces_endpoint(Settings.from_env(env))

    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://gw:4318/otlp/spans"}
    assert url(traces) == "https://gw:4318/otlp/spans"  # the full traces URL: nothing added
    assert url({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    assert url({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/otlp"}) == "http://c:4318/otlp/v1/traces"
    assert url({**traces, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "https://gw:4318/otlp/spans"
    assert url({**traces, "COGO_OTEL_ENDPOINT": "http://a:4318"}) == "http://a:4318/v1/traces"  # cogo's own first
    assert url({"COGO_OTEL_TRACES_ENDPOINT": "http://a:4318/t", "COGO_OTEL_ENDPOINT": "http://b:4318"}) == \
        "http://a:4318/t"
    assert url({**traces, "OTEL_SDK_DISABLED": "true"}) == "" and url({}) == ""
    settings = Settings.from_env(traces)
    assert Settings.from_env(settings.to_env()).otel_traces_endpoint == "https://gw:4318/otlp/spans"  # to a child
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") as refused:
        Settings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://u:hunter2@c:4317"})
    assert refused.value.details == {"variable": "COGO_OTEL_TRACES_ENDPOINT"} and "hunter2" not in str(refused.value)


@pytest.mark.parametrize(("env", "variable"), [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
])
def test_an_otlp_protocol_other_than_http_protobuf_is_refused_naming_its_variable(env, variable):
    for endpoint in ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, {"COGO_OTEL_ENDPOINT": "http://c:4318"}):
        with pytest.raises(ConfigError, match=variable) as refused:
            Settings.from_env({**endpoint, **env})
        assert refused.value.code == "config.invalid" and refused.value.details == {"variable": variable}
        assert "http/protobuf" in str(refused.value)


def test_http_protobuf_is_accepted_and_a_protocol_is_not_judged_while_tracing_is_off():
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert Settings.from_env({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}).otel_endpoint == "http://c:4318"
    assert Settings.from_env({**on, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",  # the traces one wins
                              "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).otel_endpoint == "http://c:4318"
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).otel_endpoint == ""  # no endpoint: off
    assert Settings.from_env({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_SDK_DISABLED": "true"}) \
        .otel_endpoint == ""


REQUIRE_PROBE = """
import sys
sys.modules["opentelemetry.sdk.trace"] = None  # as if the otel extra's install had failed
from tests.support import otel
try:
    otel.require("opentelemetry.sdk.trace")
except BaseException as exc:
    print(type(exc).__name__)
"""


@pytest.mark.parametrize(("ci", "outcome"), [("true", "Failed"), ("", "Skipped")])
def test_a_missing_otel_extra_fails_the_tracing_tests_under_ci_and_skips_them_elsewhere(ci, outcome):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(REQUIRE_PROBE)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CI": ci})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == outcome
