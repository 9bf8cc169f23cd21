"""``cogo-bus-reclaimer``: finds what the fast path dropped, by status and age, and sends it again.

Its duties, every ``reclaim_interval_s``:

1. **Expired leases.** A ``running`` row whose lease ran out belongs to a dead worker: another attempt
   (``retry_wait``, due now) if it has attempts left, else ``dead`` with its failure reported to the brain — or,
   when its retry policy (or ``COGO_DEAD_LETTER``) says so, held as a dead letter and not reported.
   After a sweep found the ledger unreachable, no lease is judged for one lease period: no worker could renew.
2. **Undelivered rows.** ``queued``, ``dispatched`` or due ``retry_wait`` rows that nobody took for
   ``stale_s`` were lost if their queue holds fewer messages than there are such rows (a consumer that is
   merely behind still holds them all; a batched message, ``bus.outbox.BATCHED``, counts for as many rows as
   it may carry): they are sent again. The queue's depth is read before the stale rows
   are counted (a draining backlog then never looks lossy), and a row is re-sent only when two sweeps in a
   row judge it lost (a message a consumer took but has not written yet is in neither place for a moment).
   Sending twice is harmless; every consumer's first write is conditional. No write lock is held while the
   broker is asked.
3. **Abandoned attempts that never reported.** An assignment abandoned (``dead``) while an attempt ran keeps
   its lease, and its budget stays reserved, until that attempt ends. If its lease runs out first (the worker
   died), it is closed here and reported to the brain, which settles it and so releases the reservation.
4. **Circuit breakers.** The attempts' outcomes recorded since the last pass open, close or hand back the
   circuits of (service, role, model) (``bus/circuits.py``), last, after the duties above.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, or_, select, update

from bus import circuits, faults, ledger, outcomes
from bus.broker import queue_depth
from bus.envelope import AssignmentEnvelope
from bus.errors import Problem
from bus.introspection import write
from bus.outbox import BATCH_MAX, BATCHED, Delivery, Publisher, destination
from bus.routing import Route
from bus.schema import agent_messages as m
from bus.settings import Settings

log = logging.getLogger(__name__)
BATCH = 500
RESENDABLE = (ledger.QUEUED, ledger.DISPATCHED, ledger.RETRY_WAIT)


@dataclass
class Sweep:
    """What one pass did."""

    expired: int = 0
    dead: int = 0
    resent: int = 0
    abandoned: int = 0
    circuits: int = 0
    """Changes of state of the circuit breakers (``bus/circuits.py``)."""
    deliveries: list[Delivery] = field(default_factory=list)


class Reclaimer:
    """One pass at a time; ``run_forever`` repeats it."""

    def __init__(self, *, engine: Engine, publisher: Publisher, settings: Settings,
                 depth: Callable[[str], int | None] | None = None, clock: Callable[[], float] = time.time):
        self.engine, self.publisher, self.settings, self.clock = engine, publisher, settings, clock
        self.depth = depth or (lambda q: queue_depth(publisher.app, q))
        self._suspects: set[str] = set()  # rows the last sweep judged lost; re-sent if this sweep agrees
        self._unreachable = False  # the last sweep found the ledger or the broker down
        self._back_at: float | None = None  # when it answered again

    def sweep(self) -> Sweep:
        """Expire leases, then re-send stale rows whose queues are empty."""
        try:
            return self._sweep()
        except Exception as exc:
            self._unreachable = self._unreachable or faults.is_infrastructure(exc)
            raise

    def _sweep(self) -> Sweep:
        result = Sweep()
        if self._unreachable:
            self._unreachable, self._back_at = False, self.clock()
        self._expire_leases(result)
        self._close_abandoned(result)
        self._resend_stale(result)
        if result.deliveries:
            self.publisher.send(result.deliveries)
        result.circuits = len(circuits.sweep(self.engine, now=self.clock(), settings=self.settings).changes)
        return result

    def _expire_leases(self, result: Sweep) -> None:
        now = self.clock()
        if self._back_at is not None and now < self._back_at + self.settings.lease_s:
            # While the ledger was down no worker could renew its lease: none is judged until a lease period
            # after it is back, so a live worker writes its outcome instead of losing its attempt.
            return
        with self.engine.begin() as conn:
            rows = conn.execute(select(m).where(m.c.status == ledger.RUNNING, m.c.lease_until < now)
                                .limit(BATCH)).all()
            for row in rows:
                lost = Problem("lease.expired", f"worker lost attempt {row.attempts}", True)
                error = lost.to_dict()
                audit = {"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant, "attempt": row.attempts}
                route = f"{row.service}.{row.role}"
                if row.attempts < row.max_attempts:
                    if ledger.move(conn, row.id, from_=(ledger.RUNNING,), to=ledger.RETRY_WAIT, now=now,
                                   attempt=row.attempts, values={"retry_at": now, "last_error": lost.message,
                                                                 "last_error_at": now, "lease_until": None}):
                        # ``route`` and ``end``: this attempt ended, another follows (``coordinator/metrics``).
                        ledger.record(conn, [{**audit, "kind": "lease_expired",
                                              "detail": {**error, "route": route, "end": "retry"}}], now=now)
                        result.expired += 1
                        result.deliveries.append(self._delivery(row, ledger.RETRY_WAIT))
                else:
                    self._dead(conn, row, now, lost, audit, result)

    def _dead(self, conn, row, now: float, lost: Problem, audit: dict, result: Sweep) -> None:
        """Out of attempts: ``dead``, its failure reported to its run — or, when its policy (or
        ``COGO_DEAD_LETTER``) holds dead letters, held for an operator and not reported (its run waits for it).
        ``lease_until`` is cleared, so duty 3 never takes it for an abandoned attempt."""
        envelope = AssignmentEnvelope.of(row.payload) if row.kind == "assignment" else None
        hold = envelope is not None and envelope.holds_dead_letter(self.settings.dead_letter)
        error = lost.to_dict()
        values = {"last_error": f"{lost.code}: {lost.message}", "last_error_at": now, "lease_until": None}
        if hold:
            values["dead_letter"] = ledger.HELD_LETTER
        if not ledger.move(conn, row.id, from_=(ledger.RUNNING,), to=ledger.DEAD, now=now, attempt=row.attempts,
                           values=values):
            return
        failure = {"error": Problem("execute.dead", lost.message).to_dict(), "attempts": row.attempts}
        # ``route`` and ``end`` (``coordinator/metrics``): it ended here, or it is held (its run waits for it)
        route, end = f"{row.service}.{row.role}", "held" if hold else "dead"
        held = [{**audit, "kind": "dead_letter_held", "detail": {**failure, "route": route}}] if hold else []
        ledger.record(conn, [{**audit, "kind": "lease_expired", "detail": error},
                             {**audit, "kind": "execute_dead", "detail": {**error, "route": route, "end": end}},
                             *held], now=now)
        result.dead += 1
        if not row.run_id:
            return
        if hold:
            write(conn, [envelope.token.event("dispatch.assignment.dead_lettered", row.run_id,
                                              {"assignment_id": row.id, **failure})], now=now)
        else:
            result.deliveries.append(outcomes.report(
                conn, assignment_id=row.id, run_id=row.run_id, tenant=row.tenant, payload=row.payload,
                kind=outcomes.TASK_FAILED, now=now, shard=row.shard, body=failure))

    def _close_abandoned(self, result: Sweep) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            rows = conn.execute(select(m).where(m.c.status == ledger.DEAD, m.c.lease_until.is_not(None),
                                                m.c.lease_until < now).limit(BATCH)).all()
            for row in rows:
                if not ledger.close_abandoned(conn, row.id, attempt=row.attempts, now=now):
                    continue
                error = Problem("execute.abandoned",
                                f"abandoned; attempt {row.attempts} did not report before its lease ran out").to_dict()
                ledger.record(conn, [{"message_id": row.id, "run_id": row.run_id, "tenant": row.tenant,
                                      "attempt": row.attempts, "kind": "lease_expired", "detail": error}], now=now)
                result.abandoned += 1
                if row.run_id:
                    result.deliveries.append(outcomes.report(
                        conn, assignment_id=row.id, run_id=row.run_id, tenant=row.tenant, payload=row.payload,
                        kind=outcomes.TASK_FAILED, now=now, shard=row.shard,
                        body={"error": error, "attempts": row.attempts,
                              "usage": {"tokens": row.usage_tokens, "cost_usd": row.usage_cost_usd}}))

    def _resend_stale(self, result: Sweep) -> None:
        now = self.clock()
        cutoff = now - self.settings.stale_s
        stale = self._stale(cutoff)
        if not stale:
            self._suspects = set()
            return
        # The depth is measured before the stale rows are counted again: a consumer draining a backlog meanwhile
        # only shrinks the count, never the other way round, so a busy queue is not mistaken for a lossy one.
        depth = {queue: self.depth(queue) for queue in {queue for _, queue, _ in stale.values()}}
        # A row that moved on between the reads was not lost (and its new queue was not measured).
        still = {k: v for k, v in self._stale(cutoff, among=list(stale)).items() if stale.get(k) == v}
        per_queue: dict[str, list[str]] = defaultdict(list)
        for message_id, (_, queue, _) in still.items():
            per_queue[queue].append(message_id)
        # A message of a batched task carries up to BATCH_MAX rows: its queue may hold that many per message.
        per_message = {queue: BATCH_MAX if task in BATCHED else 1 for task, queue, _ in still.values()}
        judged = {message_id for queue, ids in per_queue.items()
                  if depth[queue] is not None and depth[queue] * per_message[queue] < len(ids) for message_id in ids}
        # A message a consumer has taken but not yet written is neither queued nor moved on; it moves on within a
        # sweep. Only a row judged lost by two sweeps in a row is re-sent.
        confirmed, self._suspects = judged & self._suspects, judged - self._suspects
        if not confirmed:
            return
        groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for message_id in confirmed:
            groups[still[message_id]].append(message_id)
        not_recent = or_(m.c.published_at.is_(None), m.c.published_at < cutoff)
        with self.engine.begin() as conn:
            for (task, queue, status), ids in groups.items():
                # Stamp only rows still in the status they were read in: a row that moved on meanwhile is not lost.
                stamped = conn.execute(update(m).where(m.c.id.in_(ids), m.c.status == status, not_recent)
                                       .values(published_at=now).returning(m.c.id, m.c.run_id, m.c.tenant)).all()
                ledger.record(conn, [{"message_id": r.id, "run_id": r.run_id, "tenant": r.tenant, "kind": "reclaimed",
                                      "detail": {"queue": queue, "status": status}} for r in stamped], now=now)
                result.deliveries.extend(Delivery(task, queue, r.id) for r in stamped)
                result.resent += len(stamped)

    def _stale(self, cutoff: float, *, among: list[str] | None = None) -> dict[str, tuple[str, str, str]]:
        """Rows nobody took for ``stale_s`` (of ``among``, if given): id → (task, queue, status). A read: no
        write lock is held while the broker is asked."""
        not_recent = or_(m.c.published_at.is_(None), m.c.published_at < cutoff)
        due = or_(and_(m.c.retry_at.is_(None), m.c.updated_at < cutoff), m.c.retry_at < cutoff)
        query = (select(m.c.id, m.c.service, m.c.role, m.c.shard, m.c.tenant, m.c.run_id, m.c.status)
                 .where(m.c.status.in_(RESENDABLE), due, not_recent))
        query = query.where(m.c.id.in_(among)) if among is not None else query.order_by(m.c.updated_at).limit(BATCH)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        found = {}
        for row in rows:
            task, queue = destination(route=Route(row.service, row.role, row.shard, row.tenant), status=row.status)
            found[row.id] = (task, queue, row.status)
        return found

    def _delivery(self, row, status: str) -> Delivery:
        task, queue = destination(route=Route(row.service, row.role, row.shard, row.tenant), status=status)
        return Delivery(task, queue, row.id)
