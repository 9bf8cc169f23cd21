"""A recording bus: the real brain, dispatcher and worker runtime, in-process, over a real database.

Deliveries are recorded instead of sent; ``drain`` hands them to the right handler in due order on a
controllable clock — the deterministic counterpart of a broker (dramatiq's ``StubBroker.join``).
Tests can drop, duplicate or reorder deliveries to play the broker's worst days.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from bus.agents import Presence
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, TASK_WORK
from bus.outbox import Delivery, messages
from bus.reclaimer import Reclaimer
from bus.settings import Settings
from coordinator.admission import Setup, build
from coordinator.admission.waiting import Waiting
from coordinator.brain import Brain
from coordinator.definitions import Registry
from coordinator.dispatcher import Dispatcher
from workers.handler import Handler
from workers.runtime import Runtime, agent_of


@dataclass
class Clock:
    """A clock tests move by hand."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class RecordingPublisher:
    """Stands where ``bus.outbox.Publisher`` stands: records what would have been sent."""

    def __init__(self, clock: Clock, *, batched: bool = False):
        self.clock, self.batched = clock, batched
        self.sent: list[Delivery] = []
        self._heap: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self.batch_of: dict[int, list[str]] = {}
        """``batched``: the row ids one Celery message carries, keyed by its first delivery (``id()``)."""
        self.app = None

    def send(self, deliveries) -> int:
        """Record ``deliveries``; ``batched``, as ``bus.outbox.Publisher`` groups them into messages."""
        deliveries = list(deliveries)
        self.sent.extend(deliveries)
        grouped = messages(deliveries) if self.batched else [(d, [d.message_id]) for d in deliveries]
        for d, ids in grouped:
            if len(ids) > 1:
                self.batch_of[id(d)] = ids
            heapq.heappush(self._heap, (self.clock.now + d.countdown_s, next(self._seq), d))
        return len(deliveries)

    def pending(self) -> list[Delivery]:
        """What is waiting to be delivered, in due order."""
        return [d for _, _, d in sorted(self._heap)]

    def pop(self) -> tuple[float, Delivery] | None:
        """The next delivery and when it is due."""
        if not self._heap:
            return None
        due, _, d = heapq.heappop(self._heap)
        return due, d

    def drop_all(self) -> list[Delivery]:
        """Lose everything in flight (a flushed broker)."""
        lost = self.pending()
        self._heap.clear()
        return lost


@dataclass
class Fleet:
    """The fleet's logic, in one process, over ``engine``."""

    engine: Engine
    handlers: Mapping[tuple[str, str], Handler]
    registry: Registry = field(default_factory=Registry.builtin)
    settings: Settings = field(default_factory=lambda: Settings(broker_url="memory://",
                                                                policy_file=Path(os.devnull)).checked())
    clock: Clock = field(default_factory=Clock)
    trace: list[tuple[str, str, str]] = field(default_factory=list)
    fail_fast: bool = False
    """Re-raise an exception of planning or phase 1 in the test, instead of counting it as a brain crash."""
    batched: bool = False
    """Deliver as the real publisher sends: a step's admissions in one message, one dispatcher transaction."""
    brain_batch_after_s: float | None = None
    """The brain's ``batch_after_s``: None (the default here) applies only the rows a message carries, so a
    history is deterministic; 0.0 makes every taken row pull the shard's other due rows into its transaction."""

    def __post_init__(self) -> None:
        self.publisher = RecordingPublisher(self.clock, batched=self.batched)
        common = {"engine": self.engine, "publisher": self.publisher, "clock": self.clock}
        self.brain = Brain(registry=self.registry, shards=self.settings.shards, fail_fast=self.fail_fast,
                           batch_after_s=self.brain_batch_after_s, waiting=Waiting(self.settings.policy_path), **common)
        self.dispatcher = Dispatcher(policies=build(Setup(self.settings, frozenset(self.handlers))), **common)
        self.runtime = Runtime(settings=self.settings, handlers=self.handlers, rng=lambda: 0.5, **common)
        # Registered like a worker process (``workers.runtime.serve``), heartbeating by the test's clock in ``deliver``.
        self.agent = Presence(self.engine, agent_of(self.settings, "harness", self.handlers), clock=self.clock)
        self.agent.start(heartbeats=False)
        self.reclaimer = Reclaimer(settings=self.settings, depth=lambda _q: 0, **common)
        self.routes: dict[str, Callable[[str], str]] = {
            TASK_DECIDE: self.brain.handle, TASK_EXECUTE: self.dispatcher.handle, TASK_WORK: self.runtime.handle}

    def deliver(self, delivery: Delivery) -> str:
        """Hand one delivery to its consumer, as the broker would (a batched one: all its rows at once)."""
        self.agent.beat_if_due()
        ids = self.publisher.batch_of.get(id(delivery))  # a duplicate of the message carries them all again
        if ids is not None:
            outcomes = self.dispatcher.handle_batch(ids)
            self.trace.extend((delivery.task, i, o) for i, o in zip(ids, outcomes, strict=True))
            return outcomes[0]
        outcome = self.routes[delivery.task](delivery.message_id)
        self.trace.append((delivery.task, delivery.message_id, outcome))
        return outcome

    def drain(self, *, limit: int = 100_000, skip: Callable[[Delivery], bool] | None = None) -> int:
        """Deliver everything, advancing the clock to each delivery's due time; returns how many."""
        count = 0
        while count < limit:
            nxt = self.publisher.pop()
            if nxt is None:
                return count
            due, delivery = nxt
            self.clock.now = max(self.clock.now, due)
            if skip is not None and skip(delivery):
                continue
            self.deliver(delivery)
            count += 1
        raise AssertionError(f"drain did not settle after {limit} deliveries")


# -- helpers for the pattern tests (added with the coordinator's planning; existing behaviour unchanged) --
def registry_of(*definitions, builtin: bool = False) -> Registry:
    """A registry of definitions given as YAML text or dicts (plus the built-in ones when asked)."""
    import yaml

    from coordinator.definitions import parse_definition

    registry = Registry.builtin() if builtin else Registry()
    for raw in definitions:
        registry.add(parse_definition(yaml.safe_load(raw) if isinstance(raw, str) else raw))
    return registry


def submit(fleet: Fleet, workflow: str, payload: dict | None = None, *, tenant: str = "acme",
           run_id: str | None = None) -> str:
    """Create a run of ``workflow`` (an intent or workflow name) and queue its start event."""
    from bus.envelope import Intent
    from coordinator import intents

    definition = intents.resolve(workflow, fleet.registry)
    with fleet.engine.begin() as conn:
        run_id, delivery = intents.create_run(conn, Intent(tenant=tenant, intent=workflow, payload=payload or {}),
                                              definition, now=fleet.clock(), shards=fleet.settings.shards,
                                              run_id=run_id)
    fleet.publisher.send([delivery])
    return run_id


def events(fleet: Fleet, run_id: str, prefix: str | None = None) -> list[dict]:
    """The run's introspection events in order (optionally only types starting with ``prefix``)."""
    from bus import introspection

    with fleet.engine.connect() as conn:
        return introspection.read(conn, run_id, type_prefix=prefix)


def types(fleet: Fleet, run_id: str, prefix: str | None = None) -> list[str]:
    """The types of the run's introspection events, in order."""
    return [e["type"] for e in events(fleet, run_id, prefix)]


def run_row(fleet: Fleet, run_id: str) -> dict:
    """The run as the API shows it."""
    from coordinator.store import run_view

    with fleet.engine.connect() as conn:
        return run_view(conn, run_id)


def drain_chaotically(fleet: Fleet, rng, *, duplicate: float = 0.3, limit: int = 100_000) -> int:
    """Deliver everything like a bad broker: what is due together arrives shuffled, some of it twice."""
    count = 0
    while count < limit:
        nxt = fleet.publisher.pop()
        if nxt is None:
            return count
        due, first = nxt
        batch = [first]
        while fleet.publisher._heap and fleet.publisher._heap[0][0] <= due:
            batch.append(fleet.publisher.pop()[1])
        fleet.clock.now = max(fleet.clock.now, due)
        rng.shuffle(batch)
        for delivery in batch:
            fleet.deliver(delivery)
            count += 1
            if rng.random() < duplicate:
                fleet.publisher.send([delivery])  # the same message again, after whatever is queued now
    raise AssertionError(f"drain did not settle after {limit} deliveries")


def settle(fleet: Fleet, *, until: float | None = None, limit: int = 100_000) -> int:
    """Deliver what is due by ``until`` (default: now) without moving the clock past it; later timers wait."""
    horizon = fleet.clock.now if until is None else until
    count = 0
    while fleet.publisher._heap and fleet.publisher._heap[0][0] <= horizon:
        if count >= limit:
            raise AssertionError(f"settle did not finish after {limit} deliveries")
        due, delivery = fleet.publisher.pop()
        fleet.clock.now = max(fleet.clock.now, due)
        fleet.deliver(delivery)
        count += 1
    fleet.clock.now = max(fleet.clock.now, horizon)
    return count


# -- helpers for the budget tests (added with settlement-aware admission; existing behaviour unchanged) --
def take(fleet: Fleet, predicate: Callable[[Delivery], bool]) -> Delivery:
    """Remove and return the first pending delivery (in due order) that ``predicate`` accepts; the others stay
    pending in their order. Lets a test hold one message while it delivers a later one."""
    entries = sorted(fleet.publisher._heap)
    for i, (_, _, delivery) in enumerate(entries):
        if predicate(delivery):
            del entries[i]
            heapq.heapify(entries)
            fleet.publisher._heap = entries
            return delivery
    raise AssertionError(f"no pending delivery matches; pending: {fleet.publisher.pending()}")


def overspent(engine: Engine, root_id: str, *,
              allowance: Callable[[dict], tuple[int, float]] | None = None) -> list[str]:
    """Every budget of ``root_id``'s tree that its spend passes, spend being settled (``runs.spent_*``) plus the
    usage recorded on assignments not settled yet, each summed over the runs under the budget's run.

    ``allowance(row)`` may excuse, per assignment row, what no admission can prevent (a handler's one metering
    call that broke its own assignment's budget); the default excuses nothing.
    """
    from sqlalchemy import select

    from bus import ledger
    from bus.schema import agent_messages as m
    from coordinator.schema import runs

    with engine.connect() as conn:
        tree = {r.id: r for r in conn.execute(select(runs.c.id, runs.c.parent_run_id, runs.c.budget,
                                                     runs.c.spent_tokens, runs.c.spent_cost_usd,
                                                     runs.c.tree_spent_tokens, runs.c.tree_spent_cost_usd,
                                                     runs.c.tree_held_tokens, runs.c.tree_held_cost_usd,
                                                     runs.c.tree_in_flight)
                                              .where(runs.c.root_run_id == root_id))}
        rows = conn.execute(select(m.c.run_id, m.c.status, m.c.usage_tokens, m.c.usage_cost_usd, m.c.payload,
                                   m.c.held_tokens, m.c.held_cost_usd)
                            .where(m.c.run_id.in_(list(tree)), m.c.kind == "assignment")).all()
    own = {run_id: [float(r.spent_tokens), float(r.spent_cost_usd), 0.0, 0.0] for run_id, r in tree.items()}
    for row in rows:
        if row.status != ledger.SETTLED:
            own[row.run_id][0] += row.usage_tokens
            own[row.run_id][1] += row.usage_cost_usd
        if allowance is not None:
            extra_tokens, extra_cost = allowance(row._asdict())
            own[row.run_id][2] += extra_tokens
            own[row.run_id][3] += extra_cost
    problems = []
    for run_id, r in tree.items():
        if not r.budget:
            continue
        members = [x for x in tree if _under(x, run_id, tree)]
        tokens, cost, spare_tokens, spare_cost = (sum(own[x][i] for x in members) for i in range(4))
        if tokens > r.budget.get("maxTokens", float("inf")) + spare_tokens:
            problems.append(f"run {run_id}: {tokens:.0f} tokens spent over a budget of {r.budget}")
        if cost > r.budget.get("maxCostUsd", float("inf")) + spare_cost + 1e-9:
            problems.append(f"run {run_id}: ${cost:.6f} spent over a budget of {r.budget}")
    return problems + _counter_problems(tree, rows)


def _counter_problems(tree: Mapping, rows: list) -> list[str]:
    """Every budgeted run whose counters (``coordinator.budgets``) differ from what its subtree's rows say:
    settled spend, and the holds of admitted assignments not settled yet. True at every commit."""
    problems = []
    for run_id, r in tree.items():
        if not r.budget:
            continue
        members = {x for x in tree if _under(x, run_id, tree)}
        held = [row for row in rows if row.run_id in members and row.held_tokens is not None
                and row.status != "settled"]
        expected = [sum(tree[x].spent_tokens for x in members), sum(tree[x].spent_cost_usd for x in members),
                    sum(h.held_tokens for h in held), sum(h.held_cost_usd for h in held), len(held)]
        have = [r.tree_spent_tokens, r.tree_spent_cost_usd, r.tree_held_tokens, r.tree_held_cost_usd,
                r.tree_in_flight]
        if any(abs(a - b) > 1e-6 for a, b in zip(have, expected, strict=True)):
            problems.append(f"run {run_id}'s budget counters (spent tokens, spent $, held tokens, held $, in "
                            f"flight) are {have}; its subtree's rows say {expected}")
    return problems


def _under(run_id: str | None, ancestor: str, tree: Mapping) -> bool:
    seen = set()
    while run_id is not None and run_id in tree and run_id not in seen:
        if run_id == ancestor:
            return True
        seen.add(run_id)
        run_id = tree[run_id].parent_run_id
    return False
