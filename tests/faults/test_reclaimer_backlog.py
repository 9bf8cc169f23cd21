"""The reclaimer never floods a draining backlog: with 5,000 start events queued and nothing lost, a real brain
drains them while the reclaimer sweeps every few hundred milliseconds, and nothing is re-sent."""

from __future__ import annotations

import threading

import pytest
from rich.console import Console
from sqlalchemy import func, select

from bus.celery_app import make_celery
from bus.db import make_engine
from bus.envelope import Intent
from bus.migrate import upgrade
from bus.outbox import Publisher
from bus.reclaimer import Reclaimer
from bus.schema import bus_events
from coordinator import intents
from coordinator.definitions import Registry
from coordinator.schema import runs
from ecosystem.launcher import Fleet
from tests.e2e.conftest import WORKFLOWS, fleet_settings
from tests.support.invariants import assert_ledger_held
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

BACKLOG = 5_000


def enqueue(engine, publisher: Publisher, count: int, *, now: float) -> None:
    definition = Registry.load(WORKFLOWS).get("backlog")
    for start in range(0, count, 500):
        with engine.begin() as conn:
            deliveries = [intents.create_run(conn, Intent(tenant="acme", intent="backlog", payload={}), definition,
                                             now=now, shards=1)[1] for _ in range(min(500, count - start))]
        publisher.send(deliveries)


def completed(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(runs).where(runs.c.status == "completed")).scalar()


def test_a_draining_backlog_of_5000_is_never_resent(tmp_path, owned_redis):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url,
                              database_url=f"sqlite:///{tmp_path / 'ledger.db'}", stale_s=0.5,
                              # One event per transaction: a batching brain takes rows ahead of their messages, so
                              # the queue would always look deep enough, whatever order the reclaimer reads in.
                              brain_batch_after_s=-1.0)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    publisher = Publisher(make_celery(settings, name="test-backlog"))
    enqueue(engine, publisher, BACKLOG, now=0.0)  # created long ago: every row is stale from the first sweep
    reclaimer = Reclaimer(engine=engine, publisher=publisher, settings=settings)
    resent, stop = [], threading.Event()

    def sweep_forever() -> None:
        while not stop.wait(settings.reclaim_interval_s):
            resent.append(reclaimer.sweep().resent)

    with Fleet(settings, only=["cogo-orchestrator-brain"], free_ports=True, console=Console(quiet=True),
               show_logs=False):
        sweeper = threading.Thread(target=sweep_forever, daemon=True)
        sweeper.start()
        try:
            wait_until(lambda: completed(engine) == BACKLOG, timeout=300, interval=0.5,
                       message=f"the brain to drain {BACKLOG} start events")
        finally:
            stop.set()
            sweeper.join(timeout=30)
    with engine.connect() as conn:
        reclaimed = conn.execute(select(func.count()).select_from(bus_events)
                                 .where(bus_events.c.kind == "reclaimed")).scalar()
    print(f"{len(resent)} sweeps during the drain, {sum(resent)} re-sent")
    assert len(resent) > 10  # the reclaimer really swept while the backlog drained
    assert (sum(resent), reclaimed) == (0, 0)
    assert_ledger_held(engine, expect_runs=BACKLOG)
    engine.dispose()
