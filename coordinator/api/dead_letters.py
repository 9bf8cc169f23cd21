"""Dead letters: ``GET /api/dead-letters``, ``GET /api/dead-letters/{letter_id}``, and an operator's
``POST …/requeue`` and ``POST …/discard`` (``coordinator/dead_letters.py``).

Reads need ``runs:read``, actions ``runs:cancel`` (re-queueing resumes a run, discarding fails it: the power to
change a run's course). A tenant's key sees and acts on its own letters only; another tenant's answers 404 like a
missing one. Who acted is the authenticated principal, recorded in the audit.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from bus.envelope import Budget
from bus.errors import CogoError
from coordinator import dead_letters
from coordinator.api.auth import scoped, tenant_filter
from coordinator.api.deps import Services, services
from coordinator.keys import Principal

router = APIRouter()


class RequeueBody(BaseModel):
    """``{budget?}``: the assignment's new budget (``maxCostUsd``, ``maxTokens``); without one it keeps its own."""

    model_config = ConfigDict(extra="forbid")
    budget: Budget | None = None


class DiscardBody(BaseModel):
    """``{reason?}``: why it is discarded, for the audit."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=1000)


def _actor(who: Principal) -> dead_letters.Actor:
    return dead_letters.Actor(name=who.name, tenant=who.tenant)


def _own(who: Principal) -> str | None:
    """The tenant whose letters ``who`` may touch (None: every tenant's)."""
    return None if who.is_admin else who.tenant


def _answer(s: Services, acted: dead_letters.Acted, action: str) -> dict[str, Any]:
    if acted.deliveries:
        try:
            s.publisher.send(acted.deliveries)
        except CogoError:
            pass  # committed: the reclaimer sends it once the broker is back
    return acted.view(action)


@router.get("/api/dead-letters")
def list_dead_letters(tenant: str | None = None,
                      state: Literal["held", "requeued", "discarded", "all"] = "held",
                      limit: int = Query(100, ge=1, le=1000), s: Services = Depends(services),
                      who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """Dead letters, oldest first: held now (the default), re-queued, discarded, or ``all``; a tenant's key sees
    only its own, an admin every tenant's (or ``tenant``'s)."""
    if not who.is_admin and tenant not in (None, who.tenant):
        return {"dead_letters": []}
    with s.engine.connect() as conn:
        return {"dead_letters": dead_letters.list_letters(conn, tenant=tenant_filter(who, tenant),
                                                          state=None if state == "all" else state, limit=limit)}


@router.get("/api/dead-letters/{letter_id}")
def get_dead_letter(letter_id: str, s: Services = Depends(services),
                    who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """One dead letter and its whole history: its audit rows and its run's trace events about it, in order."""
    with s.engine.connect() as conn:
        return dead_letters.letter(conn, letter_id, tenant=_own(who))


@router.post("/api/dead-letters/{letter_id}/requeue")
def requeue_dead_letter(letter_id: str, body: RequeueBody | None = None, s: Services = Depends(services),
                        who: Principal = Depends(scoped("runs:cancel"))) -> Any:
    """Re-queue a held dead letter with a new set of attempts (and ``budget``, if given): the dispatcher admits
    it like any assignment and its run goes on. 409 ``dead_letter.not_held`` when it is not held (any more);
    422 ``budget.over_ceiling`` for a budget over the deployment's ceilings or its run's budget."""
    body = body or RequeueBody()
    with s.engine.begin() as conn:
        acted = dead_letters.requeue(conn, letter_id, by=_actor(who), tenant=_own(who), now=time.time(),
                                     budget=body.budget, max_cost_usd=s.settings.max_run_cost_usd,
                                     max_tokens=s.settings.max_run_tokens)
    return _answer(s, acted, "requeued")


@router.post("/api/dead-letters/{letter_id}/discard")
def discard_dead_letter(letter_id: str, body: DiscardBody | None = None, s: Services = Depends(services),
                        who: Principal = Depends(scoped("runs:cancel"))) -> Any:
    """Discard a held dead letter: the failure it recorded is reported to its run, which goes on to its failure
    handling; it can no longer be re-queued. 409 ``dead_letter.not_held`` when it is not held (any more)."""
    body = body or DiscardBody()
    with s.engine.begin() as conn:
        acted = dead_letters.discard(conn, letter_id, by=_actor(who), tenant=_own(who), now=time.time(),
                                     reason=body.reason)
    return _answer(s, acted, "discarded")
