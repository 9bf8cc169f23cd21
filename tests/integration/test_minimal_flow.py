"""The smallest real workflow, through the real brain, dispatcher and runtime, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from bus import introspection, ledger
from bus.envelope import Intent
from bus.schema import agent_messages, bus_events
from coordinator import intents
from coordinator.store import run_view
from tests.support.harness import Fleet
from workers.handler import WorkResult


def echo(ctx, payload):
    ctx.meter(tokens=3)
    return WorkResult(output={"echo": payload, "attempt": ctx.attempt})


def submit(fleet: Fleet, intent: str = "embed", payload: dict | None = None, tenant: str = "acme") -> str:
    definition = intents.resolve(intent, fleet.registry)
    with fleet.engine.begin() as conn:
        run_id, delivery = intents.create_run(conn, Intent(tenant=tenant, intent=intent, payload=payload or {}),
                                              definition, now=fleet.clock(), shards=1)
    fleet.publisher.send([delivery])
    return run_id


def types(engine, run_id: str) -> list[str]:
    with engine.connect() as conn:
        return [e["type"] for e in introspection.read(conn, run_id)]


def test_one_task_workflow_completes_with_its_exact_trace(engine):
    fleet = Fleet(engine, {("rag", "embed"): echo})
    run_id = submit(fleet, payload={"documents": [{"id": "d1", "text": "hello"}]})
    fleet.drain()

    with engine.connect() as conn:
        run = run_view(conn, run_id)
        audit = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id)
                                              .order_by(bus_events.c.id))]
        rows = conn.execute(select(agent_messages).where(agent_messages.c.run_id == run_id)).all()
    assert run["status"] == "completed"
    assert run["output"] == {"result": {"echo": {"documents": [{"id": "d1", "text": "hello"}]}, "attempt": 1}}
    assert run["spent_tokens"] == 3
    assert types(engine, run_id) == [
        "decision.routing.start",
        "operation.workflow.initialize",
        "operation.tokens.create",
        "decision.task.dispatch",
        "dispatch.token.enqueued",
        "dispatch.assignment.admitted",
        "dispatch.assignment.started",
        "dispatch.assignment.completed",
        "decision.assignment.settle",
        "dispatch.assignment.settled",
        "decision.task.completed",
        "operation.tokens.update_status",
        "operation.context.set",
        "decision.routing.evaluate_transition",
        "decision.routing.transition_matched",
        "operation.tokens.create",
        "operation.tokens.update_status",
        "decision.workflow.complete",
        "operation.workflow.complete",
    ]
    assert audit == ["execute_enqueued", "execute_done"]
    by_kind = {r.kind: r for r in rows}
    assert by_kind["assignment"].status == ledger.SETTLED
    assert by_kind["assignment"].usage_tokens == 3
    assert by_kind["start"].status == ledger.DONE and by_kind["task_completed"].status == ledger.DONE


def test_every_delivery_duplicated_changes_nothing(engine):
    fleet = Fleet(engine, {("rag", "embed"): echo})
    run_id = submit(fleet)
    while (nxt := fleet.publisher.pop()) is not None:
        _, delivery = nxt
        first = fleet.deliver(delivery)
        second = fleet.deliver(delivery)  # the broker delivers every message twice
        assert second in ("duplicate",), (delivery, first, second)

    with engine.connect() as conn:
        run = run_view(conn, run_id)
        audit = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id))]
    assert run["status"] == "completed"
    assert audit == ["execute_enqueued", "execute_done"]
    assert types(engine, run_id).count("dispatch.assignment.started") == 1
