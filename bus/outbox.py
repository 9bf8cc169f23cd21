"""Phase 2 of every step: send the rows a committed transaction wrote; each row's queue is derived from it.

A row is committed first and sent second. If the send fails (broker down, process killed), the row is
still in the ledger with its status and age, and the reclaimer sends it again. Sending twice is safe:
every consumer's first write is a conditional update.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery

from bus import ledger
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, TASK_WORK
from bus.errors import BrokerUnavailable
from bus.routing import DECIDE, ORCHESTRATOR, Route, decide_queue, execute_queue

log = logging.getLogger(__name__)


EARLY_TOLERANCE_S = 0.05
"""A delivery due at ``retry_at`` may arrive this early (clock skew, timer rounding) and still be applied."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Celery message to send: which task, on which queue, about which row, and when."""

    task: str
    queue: str
    message_id: str
    countdown_s: float = 0.0


def destination(*, route: Route, status: str) -> tuple[str, str]:
    """The task and queue that must next receive a row in ``status`` on ``route``.

    A decide row goes to the brain of its shard; an assignment goes to the dispatcher of its shard until it
    is dispatched, then to the worker queue of its route (the shard of a row is its run tree's, fixed when
    the row was written).
    """
    if route.service == ORCHESTRATOR and route.role == DECIDE:
        return TASK_DECIDE, decide_queue(route.shard)
    if status == ledger.DISPATCHED:
        return TASK_WORK, route.queue
    return TASK_EXECUTE, execute_queue(route.shard)


def delivery_for(msg: ledger.NewMessage, *, now: float) -> Delivery:
    """The first delivery of a freshly inserted (queued) row."""
    task, queue = destination(route=msg.route, status=ledger.QUEUED)
    countdown = max(0.0, (msg.retry_at or now) - now)
    return Delivery(task, queue, msg.id, countdown)


BATCHED = frozenset({TASK_EXECUTE})
"""Tasks whose consumer takes several rows per message (one transaction): the dispatcher. A step's fan-out
is then one hop and one admission transaction per ``BATCH_MAX`` assignments, not one per assignment. The
worker's messages are never batched (each assignment goes to whichever worker is free), nor the brain's."""
BATCH_MAX = 100


def messages(deliveries: Iterable[Delivery]) -> list[tuple[Delivery, list[str]]]:
    """The Celery messages for ``deliveries``: one per delivery, except that deliveries of a ``BATCHED`` task
    due now on one queue share messages of up to ``BATCH_MAX`` row ids, in their order."""
    out: list[tuple[Delivery, list[str]]] = []
    open_batches: dict[tuple[str, str], list[str]] = {}
    for d in deliveries:
        if d.task not in BATCHED or d.countdown_s:
            out.append((d, [d.message_id]))
            continue
        ids = open_batches.get((d.task, d.queue))
        if ids is None or len(ids) >= BATCH_MAX:
            ids = open_batches[(d.task, d.queue)] = [d.message_id]
            out.append((d, ids))
        else:
            ids.append(d.message_id)
    return out


class Publisher:
    """Sends deliveries through one Celery app's producer pool."""

    def __init__(self, app: Celery):
        self.app = app

    def send(self, deliveries: Iterable[Delivery]) -> int:
        """Send every delivery; returns how many went out.

        Raises:
            BrokerUnavailable: the broker refused; what was not sent is left to the reclaimer.
        """
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for d, ids in messages(deliveries):
                    self.app.send_task(d.task, args=ids, queue=d.queue, routing_key=d.queue,
                                       countdown=d.countdown_s or None, producer=producer)
                    sent += len(ids)
        except Exception as exc:  # kombu raises many transport types; one boundary, one error
            log.warning("publish failed after %d sends; the reclaimer will re-send: %s", sent, exc)
            raise BrokerUnavailable(f"could not publish to the broker: {exc}") from exc
        return sent
