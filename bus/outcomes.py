"""An assignment's final outcome travels to its run's brain as a decide row written in the same
transaction as the assignment's final status — so an outcome is never recorded without being reported."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from bus import ledger
from bus.envelope import AssignmentEnvelope
from bus.outbox import Delivery, delivery_for
from bus.tracing import TRACE_KEY

TASK_COMPLETED = "task_completed"
TASK_FAILED = "task_failed"


def report(conn: Connection, *, assignment_id: str, run_id: str, tenant: str, payload: dict[str, Any],
           kind: str, body: dict[str, Any], now: float, shard: int, traceparent: str | None = None) -> Delivery:
    """Insert the brain event for an assignment's outcome (on the assignment's own shard, its run tree's);
    returns its delivery for phase 2. It carries ``traceparent`` (the span that ended the attempt), else the
    trace context the assignment carries, so the brain's step is that span's child (``bus/tracing.py``)."""
    envelope = AssignmentEnvelope.of(payload)
    event = {"token_id": envelope.token.token_id or "", "assignment_id": assignment_id, **body}
    carried = traceparent or envelope.traceparent
    if carried is not None:
        event[TRACE_KEY] = carried
    msg = ledger.brain_event(run_id=run_id, tenant=tenant, kind=kind, shard=shard, causation_id=assignment_id,
                             payload=event)
    ledger.insert_messages(conn, [msg], now=now)
    return delivery_for(msg, now=now)
