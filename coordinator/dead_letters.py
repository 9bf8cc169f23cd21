"""Dead letters an operator can act on: list, inspect, re-queue (with or without a new budget), discard.

An assignment whose last attempt failed is *held* as a dead letter when its task's retry policy says so
(``retry: {dead_letter: true}``) or the fleet's default does (``COGO_DEAD_LETTER=hold``): the worker or the
reclaimer leaves it ``dead`` with ``dead_letter = 'held'``, its failure and usage recorded, and reports nothing,
so its run keeps waiting for it. Then an operator either

* **re-queues** it: ``dead → queued`` with a new set of attempts (and, if given, a new budget), sent to the
  dispatcher, which admits it like any assignment. What the letter held against its run tree's budgets and
  what its attempts spent are settled first, exactly as the brain's settlement does and in the same
  transaction, under the root run's lock (``coordinator.budgets``), so the re-admission reserves afresh and
  nothing is counted twice or lost; or
* **discards** it: the failure it recorded is reported to its run now (the report the worker or reclaimer
  would have made, ``bus.outcomes``), so the run goes on to its failure handling; the brain settles it.

Each action is one conditional UPDATE (``WHERE status = 'dead' AND dead_letter = 'held'``): of two concurrent
clicks one acts and the other answers ``dead_letter.not_held``. Each is audited (``bus_events``:
``dead_letter_requeued``, ``dead_letter_discarded``, naming who acted) and traced on the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from bus import ledger, outcomes
from bus.envelope import ASSIGNMENT_KEY, AssignmentEnvelope, Budget
from bus.errors import Conflict, InvalidRequest, NotFound, Problem
from bus.introspection import write
from bus.outbox import Delivery, destination
from bus.routing import Route
from bus.schema import agent_messages as m
from bus.schema import bus_events
from bus.schema import introspection_events as ie
from coordinator import budgets, settlement
from coordinator.schema import runs
from coordinator.timefmt import with_iso

HELD = ledger.HELD_LETTER
REQUEUED = "requeued"
DISCARDED = "discarded"
"""What ``agent_messages.dead_letter`` says of a row that was held: held now, re-queued, or discarded."""
MAX_HISTORY = 1000
"""Most audit rows and trace events ``letter`` returns of one assignment (its oldest first)."""


class DeadLetterNotFound(NotFound):
    """No dead letter with that id, or one of a tenant the caller may not see (answered alike)."""

    code = "dead_letter.not_found"


class DeadLetterNotHeld(Conflict):
    """The assignment is not held as a dead letter now: re-queued or discarded already, or settled."""

    code = "dead_letter.not_held"
    retryable = False


@dataclass(frozen=True)
class Actor:
    """Who acts on a dead letter, as the audit records it: the principal's name and tenant."""

    name: str
    tenant: str


@dataclass(frozen=True)
class Acted:
    """What an action did: the letter's id, its run, the audit detail written, and what to send after commit
    (None: nothing)."""

    id: str
    run_id: str | None
    detail: dict[str, Any]
    delivery: Delivery | None
    woken: tuple[Delivery, ...] = ()
    """What the settlement of a re-queued letter's spend woke (assignments that waited for its budget)."""

    @property
    def deliveries(self) -> list[Delivery]:
        """Everything to send after commit."""
        return ([self.delivery] if self.delivery is not None else []) + list(self.woken)

    def view(self, action: str) -> dict[str, Any]:
        """The answer of the API and the CLI."""
        return {"id": self.id, "run_id": self.run_id, "action": action, **self.detail}


_SUMMARY = (m.c.id, m.c.tenant, m.c.run_id, m.c.service, m.c.role, m.c.status, m.c.dead_letter, m.c.attempts,
            m.c.max_attempts, m.c.last_error, m.c.last_error_at, m.c.usage_tokens, m.c.usage_cost_usd,
            m.c.held_tokens, m.c.held_cost_usd, m.c.created_at, m.c.updated_at)


def list_letters(conn: Connection, *, tenant: str | None, state: str | None = HELD, limit: int = 100
                 ) -> list[dict[str, Any]]:
    """Dead letters, oldest first: those held now (``state='held'``, the default), re-queued or discarded ones,
    or every one that was ever held (``state=None``); only ``tenant``'s when given."""
    stmt = select(*_SUMMARY).where(m.c.kind == "assignment", m.c.dead_letter.is_not(None))
    if state == HELD:
        stmt = stmt.where(m.c.status == ledger.DEAD, m.c.dead_letter == HELD)
    elif state is not None:
        stmt = stmt.where(m.c.dead_letter == state)
    if tenant is not None:
        stmt = stmt.where(m.c.tenant == tenant)
    rows = conn.execute(stmt.order_by(m.c.updated_at, m.c.id).limit(limit)).mappings().all()
    return [with_iso(_summary(r)) for r in rows]


def letter(conn: Connection, letter_id: str, *, tenant: str | None) -> dict[str, Any]:
    """One dead letter with its whole history: its row, its audit rows (``bus_events``) in order, and the trace
    events of its run that name it, in order.

    Raises:
        DeadLetterNotFound: no assignment by that id was ever held, or it is not ``tenant``'s.
    """
    row = _row(conn, letter_id, tenant)
    audit = conn.execute(select(bus_events.c.id, bus_events.c.kind, bus_events.c.attempt, bus_events.c.detail,
                                bus_events.c.created_at)
                         .where(bus_events.c.message_id == letter_id).order_by(bus_events.c.id)
                         .limit(MAX_HISTORY)).mappings().all()
    token = AssignmentEnvelope.of(row.payload).token
    trace = []
    if row.run_id:
        found = conn.execute(select(ie.c.id, ie.c.type, ie.c.token_id, ie.c.node_id, ie.c.data, ie.c.created_at)
                             .where(ie.c.run_id == row.run_id, ie.c.token_id == token.token_id)
                             .order_by(ie.c.id).limit(10 * MAX_HISTORY)).mappings().all()
        trace = [dict(e) for e in found if (e["data"] or {}).get("assignment_id") == letter_id][:MAX_HISTORY]
    return with_iso({**_summary(row._mapping), "node_id": token.node_id, "token_id": token.token_id,
                     "assignment": AssignmentEnvelope.of(row.payload).assignment,
                     "history": [dict(a) for a in audit], "events": trace})


def requeue(conn: Connection, letter_id: str, *, by: Actor, tenant: str | None, now: float,
            budget: Budget | None = None, max_cost_usd: float = math.inf, max_tokens: int | float = math.inf
            ) -> Acted:
    """Re-queue a held dead letter with a new set of attempts (and ``budget``, when given), in the caller's
    transaction; send ``Acted.delivery`` after it commits (if that fails, the reclaimer sends it).

    Its attempt count goes on rather than back to 0 (the attempt number fences a worker that lost its lease):
    it may make its retry policy's ``maximum_attempts`` more. What it held and spent is settled first.

    Raises:
        DeadLetterNotFound: see ``letter``.
        DeadLetterNotHeld: it is not held now (another operator acted first, or its run moved on).
        InvalidRequest: ``budget.over_ceiling``: ``budget`` passes the operator's ceilings or a budget of its
            run tree (it could never be admitted).
    """
    row = _held(conn, letter_id, tenant)
    above = budgets.chain(conn, row.run_id)
    if budget is not None:
        _check_budget(conn, budget, above, max_cost_usd=max_cost_usd, max_tokens=max_tokens)
    if above is not None:
        budgets.lock_root(conn, above)
    envelope = AssignmentEnvelope.of(row.payload)
    payload = dict(row.payload)
    if budget is not None:
        payload[ASSIGNMENT_KEY] = {**envelope.assignment, "budget": budget.model_dump(by_alias=True)}
    attempts = envelope.retry_policy(1).maximum_attempts if envelope.retry else 1
    moved = ledger.requeue(conn, letter_id, now=now, values={
        "dead_letter": REQUEUED, "max_attempts": row.attempts + attempts, "retry_at": None, "payload": payload,
        "usage_tokens": 0, "usage_cost_usd": 0.0, "held_tokens": None, "held_cost_usd": None, "period_held": None,
        "published_at": now})
    if not moved:
        raise _not_held(letter_id, "it was re-queued or discarded meanwhile")
    settled, woken = _settle(conn, row, above, now)
    detail = {"by": by.name, "tenant": by.tenant,
              "budget": None if budget is None else budget.model_dump(by_alias=True),
              "attempts": attempts, "max_attempts": row.attempts + attempts, "settled": settled}
    _record(conn, row, "dead_letter_requeued", detail, "dispatch.assignment.requeued", now)
    task, queue = destination(route=Route(row.service, row.role, row.shard, row.tenant), status=ledger.QUEUED)
    return Acted(letter_id, row.run_id, detail, Delivery(task, queue, letter_id), tuple(woken))


def discard(conn: Connection, letter_id: str, *, by: Actor, tenant: str | None, now: float, reason: str = ""
            ) -> Acted:
    """Discard a held dead letter: report the failure it recorded to its run now, in the caller's transaction
    (send ``Acted.delivery``, the brain event, after it commits). It can no longer be re-queued.

    Raises:
        DeadLetterNotFound: see ``letter``.
        DeadLetterNotHeld: it is not held now.
    """
    row = _held(conn, letter_id, tenant)
    moved = conn.execute(update(m).where(m.c.id == letter_id, m.c.status == ledger.DEAD, m.c.dead_letter == HELD)
                         .values(dead_letter=DISCARDED, updated_at=now)).rowcount
    if moved != 1:
        raise _not_held(letter_id, "it was re-queued or discarded meanwhile")
    held = conn.execute(select(bus_events.c.detail).where(bus_events.c.message_id == letter_id,
                                                          bus_events.c.kind == "dead_letter_held")
                        .order_by(bus_events.c.id.desc()).limit(1)).scalar() or {}
    error = held.get("error") or Problem("execute.dead", row.last_error or "dead letter discarded").to_dict()
    detail = {"by": by.name, "tenant": by.tenant, "reason": reason, "error": error}
    # Held, it had not ended (its run waited); discarded, it ends dead: ``route`` and ``end`` are what
    # ``coordinator/metrics`` counts (``cogo_assignments_total{outcome="dead"}``).
    ended = {"route": f"{row.service}.{row.role}", "end": "dead"}
    _record(conn, row, "dead_letter_discarded", {**detail, **ended}, "dispatch.assignment.discarded", now)
    if row.run_id is None:  # no run waits for it: nothing to report, so it is settled here
        done = ledger.settle(conn, letter_id, now=now)
        woken = settlement.settle(conn, [done] if done else [], run_id=None, above=None, now=now, shard=row.shard)
        return Acted(letter_id, None, detail, None, tuple(woken))
    delivery = outcomes.report(conn, assignment_id=letter_id, run_id=row.run_id, tenant=row.tenant,
                               payload=row.payload, kind=outcomes.TASK_FAILED, now=now, shard=row.shard,
                               body={"error": error, "attempts": held.get("attempts", row.attempts),
                                     "usage": {"tokens": row.usage_tokens, "cost_usd": row.usage_cost_usd}})
    return Acted(letter_id, row.run_id, detail, delivery)


# -- inside ------------------------------------------------------------------------------------------------
def _row(conn: Connection, letter_id: str, tenant: str | None) -> Any:
    row = conn.execute(select(m).where(m.c.id == letter_id, m.c.kind == "assignment",
                                       m.c.dead_letter.is_not(None))).first()
    if row is None or (tenant is not None and row.tenant != tenant):
        raise DeadLetterNotFound(f"no dead letter {letter_id}")
    return row


def _held(conn: Connection, letter_id: str, tenant: str | None) -> Any:
    row = _row(conn, letter_id, tenant)
    if row.status != ledger.DEAD or row.dead_letter != HELD:
        raise _not_held(letter_id, f"it is {row.dead_letter} (status {row.status})")
    return row


def _not_held(letter_id: str, why: str) -> DeadLetterNotHeld:
    return DeadLetterNotHeld(f"assignment {letter_id} is not held as a dead letter: {why}",
                             details={"id": letter_id})


def _check_budget(conn: Connection, budget: Budget, above: budgets.Chain | None, *, max_cost_usd: float,
                  max_tokens: float) -> None:
    """A new budget must be finite (the model checks it), under the operator's ceilings and under every budget of
    its run tree (a larger one could never be admitted)."""
    limits = [("this deployment", max_cost_usd, max_tokens)]
    if above is not None:
        for run_id, run_budget in conn.execute(select(runs.c.id, runs.c.budget).where(runs.c.id.in_(above.budgeted))):
            limits.append((f"run {run_id}", run_budget.get("maxCostUsd", math.inf),
                           run_budget.get("maxTokens", math.inf)))
    for where, cost, tokens in limits:
        for field, value, ceiling in (("maxCostUsd", budget.max_cost_usd, cost), ("maxTokens", budget.max_tokens,
                                                                                   tokens)):
            if value > ceiling:
                raise InvalidRequest(f"budget.{field} is {value:g}; {where} allows at most {ceiling:g}",
                                     code="budget.over_ceiling",
                                     details={"field": f"budget.{field}", "max": ceiling, "limit": where})


def _settle(conn: Connection, row: Any, above: budgets.Chain | None, now: float
            ) -> tuple[dict[str, Any], list[Delivery]]:
    """Turn what the letter held and spent into settled spend, once (the brain's settlement, ``apply._settle``):
    its usage to its run's ``spent_*`` and, under budgets, its hold released and its usage added on every
    budgeted run above it. The caller reset the row's usage and hold in the same transaction."""
    settled = ledger.Settled.of(row)
    usage, held = settled.usage, settled.held
    woken = settlement.settle(conn, [settled], run_id=row.run_id, above=above, now=now, shard=row.shard)
    return {"tokens": usage.tokens, "cost_usd": usage.cost_usd, "model": settled.model,
            "released": None if held is None else held.model_dump()}, woken


def _record(conn: Connection, row: Any, kind: str, detail: dict[str, Any], trace: str, now: float) -> None:
    """The action's audit row and its trace event on the run."""
    ledger.record(conn, [{"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant, "attempt": row.attempts,
                          "kind": kind, "detail": detail}], now=now)
    if row.run_id:
        token = AssignmentEnvelope.of(row.payload).token
        write(conn, [token.event(trace, row.run_id, {"assignment_id": row.id, **detail})], now=now)


def _summary(r: Any) -> dict[str, Any]:
    return {"id": r["id"], "tenant": r["tenant"], "run_id": r["run_id"], "route": f"{r['service']}.{r['role']}",
            "status": r["status"], "dead_letter": r["dead_letter"], "attempts": r["attempts"],
            "max_attempts": r["max_attempts"], "last_error": r["last_error"], "last_error_at": r["last_error_at"],
            "usage": {"tokens": r["usage_tokens"], "cost_usd": r["usage_cost_usd"]},
            "held": None if r["held_tokens"] is None else {"tokens": r["held_tokens"], "cost_usd": r["held_cost_usd"]},
            "created_at": r["created_at"], "updated_at": r["updated_at"]}
