"""The control plane's own cost, without a broker: the real brain, dispatcher and worker runtime in one
process over a real ledger, fed from an in-memory queue. Reports each handler's median time and SQL
statements per call — the number a hot-path change moves, with no Celery hop and no other process.

``python -m bench handlers [--ledger sqlite|postgres|both] [--runs 200]``
"""

from __future__ import annotations

import collections
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.noop_worker import HANDLERS
from bench.stats import percentile
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, TASK_WORK
from bus.db import make_engine
from bus.envelope import Intent
from bus.migrate import upgrade
from bus.outbox import Delivery
from bus.settings import Settings

NAMES = {TASK_DECIDE: "brain", TASK_EXECUTE: "dispatcher", TASK_WORK: "worker"}


class Queue:
    """Stands where the publisher stands: keeps deliveries in order, in memory."""

    def __init__(self) -> None:
        self.pending: collections.deque[Delivery] = collections.deque()
        self.app = None

    def send(self, deliveries: Iterable[Delivery]) -> int:
        """Queue the deliveries; returns how many."""
        before = len(self.pending)
        self.pending.extend(deliveries)
        return len(self.pending) - before


class Counter:
    """SQL statements run and JSON documents encoded or decoded, by whichever handler is current."""

    def __init__(self) -> None:
        self.current = ""
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def __call__(self, *_args) -> None:
        self.counts[self.current, "statements"] += 1

    @contextlib.contextmanager
    def json(self) -> Iterator[None]:
        """Count every ``json.dumps`` and ``json.loads`` while the block runs (the ledger's codec included)."""
        dumps, loads = json.dumps, json.loads

        def counted(kind: str, fn: Callable) -> Callable:
            def wrapper(*args, **kwargs):
                self.counts[self.current, kind] += 1
                return fn(*args, **kwargs)
            return wrapper

        json.dumps, json.loads = counted("json_dumps", dumps), counted("json_loads", loads)
        try:
            yield
        finally:
            json.dumps, json.loads = dumps, loads


def measure(url: str, *, runs: int, workflow: str = "bench-chain3", warmup: int = 20) -> dict:
    """Run ``workflow`` ``runs`` times through the real handlers over ``url``; cost per handler."""
    queue, counter = Queue(), Counter()
    with counter.json():
        engine = make_engine(url)
        upgrade(engine)
        return _measure(engine, queue, counter, runs=runs, workflow=workflow, warmup=warmup)


def _measure(engine: Engine, queue: Queue, counter: Counter, *, runs: int, workflow: str, warmup: int) -> dict:
    from bus import agents
    from coordinator.admission import Setup, build
    from coordinator.admission.waiting import Waiting
    from coordinator.brain import Brain
    from coordinator.definitions import Registry
    from coordinator.dispatcher import Dispatcher
    from workers.runtime import Runtime, agent_of

    registry = Registry.load(Path(__file__).resolve().parent / "workflows")
    settings = Settings(broker_url="memory://", home=Path(tempfile.gettempdir()) / "cogo-bench-handlers").checked()
    with engine.begin() as conn:  # a live worker of the bench's route, as a fleet has (the agents policy asks)
        agents.register(conn, agent_of(settings, "bench-worker", HANDLERS), now=time.time())
    # Every default admission policy, as a fleet runs them (no policy table: no limit is set).
    dispatcher = Dispatcher(engine=engine, publisher=queue, policies=build(Setup(settings, frozenset(HANDLERS))))
    brain = Brain(engine=engine, publisher=queue, registry=registry, shards=1, waiting=Waiting(settings.policy_path))
    routes = {TASK_DECIDE: brain.handle,
              TASK_EXECUTE: dispatcher.handle,
              TASK_WORK: Runtime(engine=engine, publisher=queue, settings=settings, handlers=HANDLERS).handle}
    event.listen(Engine, "before_cursor_execute", counter)
    try:
        _drive(engine, registry, queue, routes, counter, workflow, warmup)
        counter.counts.clear()
        times = _drive(engine, registry, queue, routes, counter, workflow, runs)
    finally:
        event.remove(Engine, "before_cursor_execute", counter)
        engine.dispose()
    return {NAMES[task]: {"calls": len(v), "p50_ms": round(percentile(v, 50) * 1000, 3),
                          "mean_ms": round(sum(v) / len(v) * 1000, 3),
                          **{f"{kind}_per_call": round(counter.counts[task, kind] / len(v), 2)
                             for kind in ("statements", "json_dumps", "json_loads")}}
            for task, v in times.items()}


def _drive(engine: Engine, registry, queue: Queue, routes: dict[str, Callable[[str], str]], counter: Counter,
           workflow: str, runs: int) -> dict[str, list[float]]:
    from coordinator import intents

    times: dict[str, list[float]] = collections.defaultdict(list)
    definition = registry.get(workflow)
    for _ in range(runs):
        with engine.begin() as conn:
            _, delivery = intents.create_run(conn, Intent(tenant="bench", intent=workflow), definition,
                                             now=time.time(), shards=1)
        queue.send([delivery])
        while queue.pending:
            d = queue.pending.popleft()
            counter.current = d.task
            started = time.perf_counter()
            routes[d.task](d.message_id)
            times[d.task].append(time.perf_counter() - started)
    return times
