"""Commands from outside a run — cancel, signal, an approval's decision — become decide rows.

The brain is the only writer of a run's state: the API never changes a run directly, it writes the
event that asks the brain to (in one transaction with its checks) and sends it after the commit.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from bus import ledger
from bus.errors import Conflict, NotFound
from bus.outbox import Delivery, delivery_for
from bus.routing import shard_for
from coordinator.schema import approvals, runs
from coordinator.state import RUN_TERMINAL
from coordinator.timefmt import with_iso


def enqueue_event(conn: Connection, *, run_id: str, tenant: str, kind: str, payload: dict[str, Any], now: float,
                  shard: int, id: str | None = None) -> Delivery:
    """Write a brain event for ``run_id`` on ``shard``, its run tree's (in the caller's transaction); returns the
    delivery that sends it."""
    message = ledger.brain_event(run_id=run_id, tenant=tenant, kind=kind, payload=payload, shard=shard, id=id)
    ledger.insert_messages(conn, [message], now=now)
    return delivery_for(message, now=now)


def _live_run(conn: Connection, run_id: str) -> Any:
    row = conn.execute(select(runs.c.id, runs.c.tenant, runs.c.status, runs.c.root_run_id)
                       .where(runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"no run {run_id}", code="run.unknown")
    if row.status in RUN_TERMINAL:
        raise Conflict(f"run {run_id} is already {row.status}", code="run.terminal",
                       details={"run_id": run_id, "status": row.status})
    return row


def cancel(conn: Connection, run_id: str, *, reason: str, now: float, shards: int) -> Delivery:
    """Ask the brain to cancel a run (and its children).

    Raises:
        NotFound: no such run. Conflict: code ``run.terminal``, the run has already ended.
    """
    run = _live_run(conn, run_id)
    return enqueue_event(conn, run_id=run_id, tenant=run.tenant, kind="cancel", payload={"reason": reason}, now=now,
                         shard=shard_for(run.root_run_id or run_id, shards))


def signal(conn: Connection, run_id: str, name: str, data: dict[str, Any], *, now: float, shards: int) -> Delivery:
    """Deliver a named external event to a run (its ``wait: {event: name}`` nodes resume).

    Raises:
        NotFound: no such run. Conflict: code ``run.terminal``, the run has already ended.
    """
    run = _live_run(conn, run_id)
    return enqueue_event(conn, run_id=run_id, tenant=run.tenant, kind="signal", payload={"name": name, "data": data},
                         now=now, shard=shard_for(run.root_run_id or run_id, shards))


def decide_approval(conn: Connection, approval_id: str, *, approved: bool, by: str, comment: str, now: float,
                    shards: int) -> tuple[dict[str, Any], Delivery]:
    """Record a person's decision on a pending approval as the brain's ``approval`` event.

    The event's id is derived from the approval, so a second decision on the same approval collides
    with the first in the ledger and is refused even before the brain has applied the first.

    Raises:
        NotFound: code ``approval.unknown``. Conflict: code ``approval.not_pending``.
    """
    row = conn.execute(select(approvals).where(approvals.c.id == approval_id)).mappings().first()
    if row is None:
        raise NotFound(f"no approval {approval_id}", code="approval.unknown")
    if row["status"] != "pending":
        raise Conflict(f"approval {approval_id} is {row['status']}, not pending", code="approval.not_pending",
                       details={"approval_id": approval_id, "status": row["status"]})
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cogo:approval-decision:{approval_id}"))
    payload = {"approval_id": approval_id, "token_id": row["token_id"], "approved": approved, "by": by,
               "comment": comment}
    try:
        with conn.begin_nested():
            root = conn.execute(select(runs.c.root_run_id).where(runs.c.id == row["run_id"])).scalar()
            delivery = enqueue_event(conn, run_id=row["run_id"], tenant=row["tenant"], kind="approval", payload=payload,
                                     now=now, shard=shard_for(root or row["run_id"], shards), id=event_id)
    except IntegrityError:
        raise Conflict(f"approval {approval_id} has already been decided", code="approval.not_pending",
                       details={"approval_id": approval_id, "status": "decided"}) from None
    return {**dict(row), "event_id": event_id}, delivery


def list_approvals(conn: Connection, *, tenant: str | None = None, status: str | None = "pending",
                   run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Approval requests, oldest first (epoch times with their ISO 8601 ``<key>_iso`` beside them)."""
    stmt = select(approvals)
    for column, value in ((approvals.c.tenant, tenant), (approvals.c.status, status), (approvals.c.run_id, run_id)):
        if value:
            stmt = stmt.where(column == value)
    rows = conn.execute(stmt.order_by(approvals.c.requested_at, approvals.c.id).limit(limit)).mappings().all()
    return [with_iso(dict(r)) for r in rows]
