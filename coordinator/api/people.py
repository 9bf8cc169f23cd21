"""People and the outside world: approvals, signals, cancellation, and ``explain``.

Each command is written as a decide row for the run's brain (committed before the answer), so the
answers are ``202 Accepted``: the brain applies the command in the run's order, once.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from bus.errors import CogoError
from bus.outbox import Delivery
from coordinator import commands
from coordinator.api.auth import owned_approval, owned_run, scoped, tenant_filter
from coordinator.api.deps import Services, services
from coordinator.explain import explain
from coordinator.keys import Principal

router = APIRouter()


class ApprovalDecision(BaseModel):
    """``{comment}`` of an approve or reject; who decided is the authenticated principal, never a body field."""

    model_config = ConfigDict(extra="forbid")
    comment: str = Field(default="", max_length=10_000)


class SignalBody(BaseModel):
    """The data a signal carries to the waiting node (its output)."""

    data: dict[str, Any] = Field(default_factory=dict)


class CancelBody(BaseModel):
    """Why the run is cancelled."""

    reason: str = Field(default="cancelled by API", max_length=1000)


def _send(s: Services, delivery: Delivery) -> None:
    try:
        s.publisher.send([delivery])
    except CogoError:
        pass  # committed: the reclaimer sends the event once the broker is back


@router.get("/api/approvals")
def list_approvals(tenant: str | None = None, status: str | None = "pending", run_id: str | None = None,
                   limit: int = Query(100, ge=1, le=1000), s: Services = Depends(services),
                   who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Approval requests (pending by default), oldest first; a tenant's key sees only its own."""
    if not who.is_admin and tenant not in (None, who.tenant):
        return {"approvals": []}
    with s.engine.connect() as conn:
        return {"approvals": commands.list_approvals(conn, tenant=tenant_filter(who, tenant), status=status or None,
                                                     run_id=run_id, limit=limit)}


def _decide(approval_id: str, body: ApprovalDecision, s: Services, who: Principal, *,
            approved: bool) -> dict[str, Any]:
    with s.engine.begin() as conn:
        owned_approval(conn, approval_id, who)
        row, delivery = commands.decide_approval(conn, approval_id, approved=approved, by=who.name,
                                                 comment=body.comment, now=time.time(), shards=s.settings.shards)
    _send(s, delivery)
    return {"approval_id": approval_id, "run_id": row["run_id"], "decision": "approve" if approved else "reject",
            "by": who.name, "status": "accepted", "event_id": row["event_id"]}


@router.post("/api/approvals/{approval_id}/approve", status_code=202)
def approve(approval_id: str, body: ApprovalDecision | None = None, s: Services = Depends(services),
            who: Principal = Depends(scoped("approvals:decide"))) -> dict[str, Any]:
    """Approve a pending request; the run takes the approve route (409 ``approval.not_pending`` otherwise)."""
    return _decide(approval_id, body or ApprovalDecision(), s, who, approved=True)


@router.post("/api/approvals/{approval_id}/reject", status_code=202)
def reject(approval_id: str, body: ApprovalDecision | None = None, s: Services = Depends(services),
            who: Principal = Depends(scoped("approvals:decide"))) -> dict[str, Any]:
    """Reject a pending request; the run takes the reject route (409 ``approval.not_pending`` otherwise)."""
    return _decide(approval_id, body or ApprovalDecision(), s, who, approved=False)


@router.post("/api/runs/{run_id}/signals/{name}", status_code=202)
def post_signal(run_id: str, name: str, body: SignalBody | None = None, s: Services = Depends(services),
                who: Principal = Depends(scoped("intents:write"))) -> dict:
    """Deliver the external event ``name`` to the run (409 ``run.terminal`` when it has ended)."""
    with s.engine.begin() as conn:
        owned_run(conn, run_id, who)
        delivery = commands.signal(conn, run_id, name, (body or SignalBody()).data, now=time.time(),
                                   shards=s.settings.shards)
    _send(s, delivery)
    return {"run_id": run_id, "signal": name, "status": "accepted", "event_id": delivery.message_id}


@router.post("/api/runs/{run_id}/cancel", status_code=202)
def post_cancel(run_id: str, body: CancelBody | None = None, s: Services = Depends(services),
                who: Principal = Depends(scoped("runs:cancel"))) -> dict[str, Any]:
    """Cancel the run and its children (409 ``run.terminal`` when it has already ended)."""
    with s.engine.begin() as conn:
        owned_run(conn, run_id, who)
        delivery = commands.cancel(conn, run_id, reason=(body or CancelBody()).reason, now=time.time(),
                                   shards=s.settings.shards)
    _send(s, delivery)
    return {"run_id": run_id, "status": "accepted", "event_id": delivery.message_id}


@router.get("/api/runs/{run_id}/explain")
def get_explain(run_id: str, s: Services = Depends(services),
                who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """What the run is waiting for, and why."""
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        return explain(conn, run_id)
