"""Infrastructure faults mid-run on a supervised fleet of real processes: a flushed broker, a restarted broker, the
ledger's connections cut, a restarted database. Every run still completes, no process dies of it, and the ledger
holds; an outage is retried, never counted against a message (no brain crash counted, no ``brain.crashed``, no
``policy.error``, no finished attempt lost).

The broker and the ledger are a redis-server and a PostgreSQL cluster this module starts for itself
(``tests/support/owned.py``), so it may flush, restart and cut them; one fleet serves the module's tests in turn
(``tests/support/fault_fleet.py``), each with its own batch of budgeted fan-out runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from ecosystem.launcher import Fleet
from tests.support.fault_fleet import BRAIN, DISPATCHER, Logs, Workload, await_healthy, owned_fault_fleet, pids
from tests.support.owned import OwnedPostgres, OwnedRedis
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Owned:
    """The fleet and the servers under it that the module owns."""

    fleet: Fleet
    broker: OwnedRedis
    database: OwnedPostgres


@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    """A supervised fault fleet on a redis-server and a PostgreSQL cluster of the module's own."""
    with owned_fault_fleet(tmp_path_factory.mktemp("infra")) as (fleet, broker, database):
        yield Owned(fleet, broker, database)


@pytest.fixture
def work(owned, tmp_path):
    """A fresh batch of runs on a healthy fleet; afterwards, no process of it may have died of the fault."""
    await_healthy(owned.fleet)
    before = pids(owned.fleet)
    with Workload(owned.fleet, tmp_path / "gate") as batch:
        yield batch
    assert pids(owned.fleet) == before, "a process died of the fault and was restarted"


def test_a_broker_flushed_mid_run_loses_nothing_the_reclaimer_resends_it(owned, work):
    work.submit()
    work.await_mid_run()
    work.arm()
    work.await_held()
    work.await_waiting_in_broker()  # steps the held worker has not taken: only the broker holds their messages
    flushed_at = time.time()
    owned.broker.flush()
    work.release()
    work.assert_completed()
    assert [r for r in work.audit("reclaimed") if r.created_at >= flushed_at]


def test_a_broker_restarted_mid_run_loses_nothing(owned, work):
    # Restarted again and again while consumers hold unacknowledged messages: each must reconnect, none may die
    # of the broker going away under it (bus/consumer.py, CogoConsumer).
    work.submit()
    work.await_mid_run()
    for _ in range(3):
        owned.broker.restart(down_s=2)
        work.await_progress()
    work.assert_completed()


def test_the_ledgers_connections_cut_mid_run_are_retried_not_counted(owned, work):
    work.submit()
    work.await_mid_run()
    logs = Logs(owned.fleet, [BRAIN, DISPATCHER])
    # A connection cut while idle in the pool is replaced unseen (pre-ping); only one cut in the middle of a
    # transaction tests anything. So the fleet's connections are cut again and again until the brain or the
    # dispatcher reports retrying such a transaction (bus/faults.py logs it), or until the steps have all ended.
    cuts = wait_until(lambda: _cut(owned.database, logs, work), timeout=60, interval=0.02,
                      message="a transaction cut mid-flight, or every step ended")
    work.assert_completed()
    assert cuts == "felt", "no transaction of the brain or the dispatcher was cut mid-flight"


def _cut(database: OwnedPostgres, logs: Logs, work: Workload) -> str | None:
    database.terminate_backends()
    if logs.contain("infrastructure fault (try"):
        return "felt"
    return "ended" if work.steps_open() == 0 else None


def test_a_database_restarted_mid_run_is_retried_not_counted(owned, work):
    work.submit()
    work.await_mid_run()
    owned.database.restart(down_s=3)
    work.assert_completed()


def test_an_outcome_written_during_a_database_outage_is_not_lost(owned, tmp_path):
    # A task without retries: an attempt lost to the outage (its lease expiring) would fail the run, execute.dead.
    await_healthy(owned.fleet)
    with Workload(owned.fleet, tmp_path / "gate", workflow="fault-single", runs=1, items=1) as work:
        work.arm()
        work.submit()
        task, _, _ = work.await_held()
        owned.database.stop("immediate")
        try:
            work.release()
            # The handler returned: the worker writes the outcome of its only attempt now, into no database.
            wait_until(lambda: [e for e in work.marks("ends") if e[0] == task], timeout=30, message="the step to end")
        finally:
            owned.database.start()
        work.assert_completed()
