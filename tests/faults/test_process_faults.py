"""``kill -9`` of each process of a supervised fleet mid-run: it is restarted, every run completes, the ledger holds.

The fleet (``tests/support/fault_fleet.py``) runs the real API, brain, dispatcher, reclaimer, rag-embed worker
and a fault worker as separate processes, tended as ``cogo up`` tends them. The broker and the ledger are
servers the test owns (``owned_redis``, ``owned_postgres``); the same faults also run on the embedded default
(the redis-server the launcher starts, SQLite). Each test submits a batch of budgeted fan-out runs, injects one
fault at an observed moment, and ends with ``assert_ledger_held``.
"""

from __future__ import annotations

import time

import pytest
import redis

from tests.e2e.conftest import fleet_settings
from tests.support.fault_fleet import BRAIN, DISPATCHER, RECLAIMER, WORKER, Workload, fault_fleet, \
    kill_and_await_restart
from tests.support.invariants import assert_ledger_held

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["owned-postgres", "embedded"])
def settings(request, tmp_path):
    """The fleet's settings: an owned redis-server and PostgreSQL cluster, or the embedded default."""
    if request.param == "embedded":
        return fleet_settings(tmp_path)  # the launcher starts its redis-server; the ledger is SQLite
    broker = request.getfixturevalue("owned_redis")
    database = request.getfixturevalue("owned_postgres")
    return fleet_settings(tmp_path, broker_url=broker.url, database_url=database.url)


def assert_completed(work: Workload) -> None:
    """Every run of the batch completed with every step joined, and the ledger held."""
    runs = work.await_ended()
    assert [r["status"] for r in runs] == ["completed"] * work.runs, [(r["id"], r["status"], r["error"])
                                                                       for r in runs]
    assert all(r["output"]["steps"] == list(range(work.items)) for r in runs), [r["output"] for r in runs]
    assert_ledger_held(work.engine, expect_runs=work.runs)


@pytest.mark.parametrize("label", [BRAIN, DISPATCHER])
def test_a_killed_coordinator_process_is_restarted_and_every_run_completes(label, settings, tmp_path):
    with fault_fleet(settings) as fleet:
        work = Workload(fleet, tmp_path / "gate")
        try:
            work.submit()
            work.await_mid_run()
            old, new = kill_and_await_restart(fleet, label)
            assert new != old
            assert_completed(work)
        finally:
            work.close()


def test_a_killed_worker_is_restarted_and_the_assignment_it_held_runs_again_once(settings, tmp_path):
    with fault_fleet(settings) as fleet:
        work = Workload(fleet, tmp_path / "gate")
        try:
            work.submit()
            work.await_mid_run()
            work.arm()
            task, attempt, pid = work.await_held()  # the worker is inside this attempt's handler
            old, new = kill_and_await_restart(fleet, WORKER)
            work.release()
            assert_completed(work)
            starts, ends = work.marks("starts"), work.marks("ends")
            expired = [r.message_id for r in work.audit("lease_expired")]
        finally:
            work.close()
    assert (attempt, pid) == (1, old)
    assert (task, 1, old) in starts and not [e for e in ends if e[0] == task and e[1] == 1]  # killed mid-handler
    assert [(a, p) for t, a, p in ends if t == task] == [(2, new)]  # the next attempt, on the new worker, once
    assert task in expired  # the reclaimer took the lease back


def test_a_killed_reclaimer_is_restarted_and_still_resends_what_the_broker_lost(settings, tmp_path):
    with fault_fleet(settings) as fleet:
        work = Workload(fleet, tmp_path / "gate")
        try:
            work.submit()
            work.await_mid_run()
            work.arm()
            work.await_held()  # the worker holds one step; the dispatched steps' messages wait in the broker
            kill_and_await_restart(fleet, RECLAIMER)
            restarted_at = time.time()
            waiting = work.step_statuses()["dispatched"]
            redis.Redis.from_url(fleet.settings.broker_url).flushall()  # the broker the fleet was given: ours
            work.release()
            assert_completed(work)
            resent = [r for r in work.audit("reclaimed") if r.created_at >= restarted_at]
        finally:
            work.close()
    assert waiting >= 1
    assert resent, "the restarted reclaimer re-sent nothing, yet the flushed steps completed"
