"""Circuit breakers through the real brain, dispatcher, runtime and reclaimer, on SQLite and PostgreSQL: a model
that fails N times then recovers opens its circuit, new work waits (not sent, no attempt used) with the reason in
``explain``, one probe goes after the cool-down, its success closes the circuit and the waiting work completes; a
failing probe re-opens it for twice as long; two dispatchers racing for the probe admit exactly one."""

from __future__ import annotations

import threading
from dataclasses import replace

from sqlalchemy import event, insert, select

from bus import circuits, ledger
from bus.errors import WorkFailed
from bus.schema import agent_messages as m
from bus.schema import bus_events, circuit_cursor
from bus.schema import circuits as circuits_table
from bus.settings import Settings
from coordinator.admission import Setup, build
from coordinator.dispatcher import Dispatcher
from coordinator.explain import explain
from tests.support.harness import Fleet, registry_of, run_row, submit, types
from workers.handler import WorkResult

CALL = """
name: call
start: call
nodes:
  call:
    kind: task
    route: {service: t, role: call}
    agent: {agent_id: w, model: gpt-x}
    retry: {maximum_attempts: 6, initial_interval_ms: 1000, backoff_coefficient: 1.0, jitter: 0.0}
    output: call
    next: done
  done: {kind: end, output: {attempt: context.call.attempt}}
"""
POLICIES = "budgets,coordinator.admission.circuits:CircuitsPolicy"
KEY = ("t", "call", "gpt-x")


class Model:
    """A model that fails its next ``failing`` calls, then answers."""

    def __init__(self, failing: int):
        self.failing, self.calls = failing, 0

    def __call__(self, ctx, payload):
        self.calls += 1
        if self.failing > 0:
            self.failing -= 1
            raise WorkFailed(f"the model is down (call {self.calls})", retryable=True)
        return WorkResult(output={"attempt": ctx.attempt})


def fleet_of(engine, model: Model) -> Fleet:
    settings = replace(Settings(broker_url="memory://").checked(), admission_policies=POLICIES, circuit_failures=3,
                       circuit_cooldown_s=30.0)
    return Fleet(engine, {("t", "call"): model}, registry=registry_of(CALL), settings=settings)


def run(fleet: Fleet, *, until=lambda: False, limit: int = 2000) -> None:
    """Deliver in due order, the reclaimer sweeping after each delivery (as its loop would, between them)."""
    for _ in range(limit):
        if until():
            return
        nxt = fleet.publisher.pop()
        if nxt is None:
            return
        due, delivery = nxt
        fleet.clock.now = max(fleet.clock.now, due)
        fleet.deliver(delivery)
        fleet.reclaimer.sweep()
    raise AssertionError(f"not settled after {limit} deliveries")


def circuit_rows(fleet: Fleet) -> list[tuple[str, dict]]:
    with fleet.engine.connect() as conn:
        rows = conn.execute(select(bus_events.c.kind, bus_events.c.detail)
                            .where(bus_events.c.kind.like("circuit_%")).order_by(bus_events.c.id)).all()
    return [(r.kind, r.detail) for r in rows]


def assignment_of(fleet: Fleet, run_id: str):
    with fleet.engine.connect() as conn:
        return conn.execute(select(m).where(m.c.run_id == run_id, m.c.kind == "assignment")).one()


def audit(fleet: Fleet, message_id: str) -> list[str]:
    with fleet.engine.connect() as conn:
        return list(conn.execute(select(bus_events.c.kind).where(bus_events.c.message_id == message_id)
                                 .order_by(bus_events.c.id)).scalars())


def circuit(fleet: Fleet) -> circuits.Circuit:
    with fleet.engine.connect() as conn:
        return circuits.read_one(conn, KEY)


def test_the_whole_cycle_open_wait_probe_close_and_the_waiting_work_completes(engine):
    model = Model(failing=3)
    fleet = fleet_of(engine, model)
    first = submit(fleet, "call")
    run(fleet, until=lambda: bool(circuit_rows(fleet)))

    [(kind, detail)] = circuit_rows(fleet)
    assert kind == "circuit_open" and detail["why"] == "3 consecutive failures"
    assert (detail["service"], detail["role"], detail["model"], detail["runs"]) == ("t", "call", "gpt-x", [first])
    opened = circuit(fleet)
    assert opened.state == "open" and opened.retry_at == opened.opened_at + 30.0
    assert "dispatch.circuit.opened" in types(fleet, first)

    # New work waits: deferred, not sent, no attempt used; explain says why in plain words. (A dispatcher reads
    # the circuits at most every REFRESH_S: a second later it knows.)
    fleet.clock.now += 1.0
    second = submit(fleet, "call")
    run(fleet, until=lambda: _has_assignment(fleet, second)
        and "execute_deferred" in audit(fleet, assignment_of(fleet, second).id))
    row = assignment_of(fleet, second)
    assert (row.status, row.attempts) == ("queued", 0)
    assert "execute_enqueued" not in audit(fleet, row.id)
    with engine.connect() as conn:
        summary = explain(conn, second)["summary"]
    when = circuits_time(opened.retry_at)
    assert (f"the circuit of t.call / model gpt-x is open after 3 consecutive failures; next probe at {when}"
            in summary), summary
    assert "[circuit.open]" in summary

    # After the cool-down one probe goes; it succeeds; the circuit closes; everything completes.
    run(fleet)
    assert [k for k, _ in circuit_rows(fleet)] == ["circuit_open", "circuit_half_open", "circuit_closed"]
    probe = circuit_rows(fleet)[1][1]["probe_id"]
    assert circuit_rows(fleet)[2][1]["probe_id"] is None
    assert fleet.clock.now >= opened.retry_at
    assert circuit(fleet).state == "closed"
    assert run_row(fleet, first)["status"] == "completed" and run_row(fleet, second)["status"] == "completed"
    assert model.calls == 5  # 3 failures, the probe, the work that waited for it
    assert assignment_of(fleet, second).attempts == 1
    probe_run = next(r for r in (first, second) if assignment_of(fleet, r).id == probe)
    assert {"dispatch.circuit.half_open", "dispatch.circuit.closed"} <= set(types(fleet, probe_run))


def test_a_failing_probe_reopens_the_circuit_for_twice_as_long(engine):
    model = Model(failing=4)  # three open it, the probe fails too
    fleet = fleet_of(engine, model)
    first = submit(fleet, "call")
    run(fleet, until=lambda: len(circuit_rows(fleet)) >= 3)
    assert [k for k, _ in circuit_rows(fleet)] == ["circuit_open", "circuit_half_open", "circuit_open"]
    reopened = circuit(fleet)
    assert reopened.open_count == 2 and reopened.retry_at - reopened.opened_at == 60.0
    assert reopened.reason.startswith("its probe ") and reopened.reason.endswith("failed (work.failed)")
    run(fleet)
    assert [k for k, _ in circuit_rows(fleet)][-2:] == ["circuit_half_open", "circuit_closed"]
    assert run_row(fleet, first)["status"] == "completed" and model.calls == 5


def test_two_dispatchers_racing_for_the_probe_admit_exactly_one(engine):
    fleet = fleet_of(engine, Model(failing=0))
    runs = [submit(fleet, "call") for _ in range(2)]
    run(fleet, until=lambda: all(_has_assignment(fleet, r) for r in runs))
    ids = [assignment_of(fleet, r).id for r in runs]
    now = fleet.clock.now
    with engine.begin() as conn:  # an open circuit whose cool-down is over
        conn.execute(insert(circuits_table).values(**circuits.Circuit(
            *KEY, state="open", opened_at=now - 40, retry_at=now - 10, open_count=1, reason="5 consecutive failures",
            updated_at=now - 40).values()))
    dispatchers = [Dispatcher(engine=engine, publisher=fleet.publisher, clock=fleet.clock,
                              policies=build(Setup(fleet.settings))) for _ in ids]
    barrier, results = threading.Barrier(len(ids)), {}

    def admit(dispatcher: Dispatcher, message_id: str) -> None:
        barrier.wait()
        results[message_id] = dispatcher.handle(message_id)

    threads = [threading.Thread(target=admit, args=pair) for pair in zip(dispatchers, ids, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results.values()) == ["deferred", "dispatched"]
    probe = next(i for i, r in results.items() if r == "dispatched")
    assert circuit(fleet).state == "half_open" and circuit(fleet).probe_id == probe
    assert [k for k, _ in circuit_rows(fleet)] == ["circuit_half_open"]
    run(fleet)
    assert circuit(fleet).state == "closed"
    assert all(run_row(fleet, r)["status"] == "completed" for r in runs)


def test_a_probe_another_policy_held_back_hands_the_circuit_back(engine):
    fleet = fleet_of(engine, Model(failing=0))
    run_id = submit(fleet, "call")
    run(fleet, until=lambda: _has_assignment(fleet, run_id))
    probe = assignment_of(fleet, run_id).id
    now = fleet.clock.now
    with engine.begin() as conn:  # half-open, its probe never sent (as when a later policy deferred it)
        conn.execute(insert(circuits_table).values(**circuits.Circuit(
            *KEY, state="half_open", opened_at=now - 40, retry_at=now - 10, open_count=1, probe_id=probe,
            reason="5 consecutive failures", updated_at=now).values()))
    fleet.reclaimer.sweep()
    back = circuit(fleet)
    assert (back.state, back.probe_id, back.retry_at) == ("open", None, now - 10)
    assert circuit_rows(fleet)[-1][1]["why"] == f"its probe {probe} was not run"


def test_a_held_back_probe_admitted_while_the_sweep_reads_keeps_its_circuit_half_open(engine):
    fleet = fleet_of(engine, Model(failing=0))
    run_id = submit(fleet, "call")
    run(fleet, until=lambda: _has_assignment(fleet, run_id))
    probe = assignment_of(fleet, run_id)
    assert probe.status == "queued"
    now = fleet.clock.now
    with engine.begin() as conn:  # half-open, its probe held back by a later policy: the sweep reads it stale
        conn.execute(insert(circuits_table).values(**circuits.Circuit(
            *KEY, state="half_open", opened_at=now - 40, retry_at=now - 10, open_count=1, probe_id=probe.id,
            reason="5 consecutive failures", updated_at=now).values()))
    admitted = []

    def readmit(dbapi_conn, record) -> None:  # the sweep's read is over: a dispatcher admits the probe right then
        if not admitted:
            admitted.append(None)
            with engine.begin() as other:
                admitted[0] = ledger.move(other, probe.id, from_=("queued",), to="dispatched", now=now)

    event.listen(engine.pool, "checkin", readmit)
    try:
        circuits.sweep(engine, now=now, settings=fleet.settings)
    finally:
        event.remove(engine.pool, "checkin", readmit)
    assert admitted == [True]
    kept = circuit(fleet)
    assert (kept.state, kept.probe_id) == ("half_open", probe.id)
    assert [kind for kind, _ in circuit_rows(fleet)] == []
    with engine.begin() as conn:  # so no second assignment becomes a probe of the same circuit
        assert circuits.claim_probe(conn, replace(kept, state="open"), "other", now=now + 1, tenant="acme",
                                    run_id=None) is None


def _has_assignment(fleet: Fleet, run_id: str) -> bool:
    with fleet.engine.connect() as conn:
        return conn.execute(select(m.c.id).where(m.c.run_id == run_id, m.c.kind == "assignment")).first() is not None


def circuits_time(epoch_s: float) -> str:
    from coordinator.timefmt import clock

    return clock(epoch_s)



def test_the_orchestrator_state_shows_every_circuit_to_admins_and_a_run_as_before(engine):
    from coordinator.timefmt import iso
    from tests.support.api import app_of, http, make_key

    fleet = fleet_of(engine, Model(failing=3))
    run_id = submit(fleet, "call", tenant="acme")
    run(fleet, until=lambda: bool(circuit_rows(fleet)))
    opened = circuit(fleet)
    app = app_of(fleet)
    answer = http(app, make_key(engine, "ops")).get("/api/orchestrator/state")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    [shown] = body["circuits"]
    assert (shown["service"], shown["role"], shown["model"], shown["state"]) == KEY + ("open",)
    assert (shown["consecutive_failures"], shown["reason"]) == (3, "3 consecutive failures")
    assert (shown["opened_at_iso"], shown["retry_at_iso"]) == (iso(opened.opened_at), iso(opened.retry_at))
    assert body["circuit_counts"] == {"closed": 0, "open": 1, "half_open": 0}

    reader = http(app, make_key(engine, "acme", ["runs:read"]))
    refused = reader.get("/api/orchestrator/state")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "auth.scope")
    own = reader.get("/api/orchestrator/state", params={"run_id": run_id})
    assert own.status_code == 200 and own.json()["run"]["id"] == run_id
    assert reader.get("/api/orchestrator/state", params={"run_id": "nope"}).json()["error"]["code"] == "run.unknown"


def test_an_outcome_committed_late_below_applied_ids_is_counted_once(engine):
    settings = replace(Settings(broker_url="memory://").checked(), circuit_failures=3)
    now = 1_800_000_000.0
    payload = {"__assignment": {"agent_id": "w", "model": "gpt-x"}}
    with engine.begin() as conn:
        conn.execute(insert(m).values(id="a1", service="t", role="call", shard=0, tenant="acme", kind="assignment",
                                      payload=payload, status="failed", attempts=3, max_attempts=3,
                                      created_at=now, updated_at=now))

    def failed(conn, event_id: int, attempt: int) -> None:
        conn.execute(insert(bus_events).values(id=event_id, message_id="a1", tenant="acme", kind="execute_failed",
                                               attempt=attempt, detail={"code": "work.failed"}, created_at=now))

    with engine.begin() as conn:
        failed(conn, 10, 1)
        failed(conn, 12, 2)
    assert circuits.sweep(engine, now=now, settings=settings).read == 2
    assert circuit_of(engine).consecutive_failures == 2
    with engine.begin() as conn:  # id 11 was taken before 12 but its transaction commits only now
        failed(conn, 11, 3)
    swept = circuits.sweep(engine, now=now + 1, settings=settings)
    assert swept.read == 1 and [c.circuit.state for c in swept.changes] == ["open"]
    assert circuits.sweep(engine, now=now + 2, settings=settings).read == 0
    assert circuits.sweep(engine, now=now + 100, settings=settings).read == 0  # the floor rose past them all
    with engine.connect() as conn:
        cursor = conn.execute(select(circuit_cursor)).one()
    assert (cursor.low_id, cursor.seen) == (12, [])


def circuit_of(engine) -> circuits.Circuit:
    with engine.connect() as conn:
        return circuits.read_one(conn, KEY)
