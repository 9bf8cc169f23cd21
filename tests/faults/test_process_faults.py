"""``kill -9`` of each process of a supervised fleet mid-run: it is restarted, every run completes, the ledger holds.

The fleet (``tests/support/fault_fleet.py``) runs the real API, brain, dispatcher, reclaimer, rag-embed worker
and a fault worker as separate processes, tended as ``cogo up`` tends them. Its broker and ledger are servers
the module owns (a redis-server and a PostgreSQL cluster); the same faults run again on the embedded default
(the redis-server the launcher starts, SQLite). One fleet per backend serves the module's tests in turn, since
starting one costs more than a test: each test submits its own batch of budgeted fan-out runs, injects one
fault at an observed moment, and ends with ``assert_ledger_held`` on its runs.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

from tests.e2e.conftest import fleet_settings
from tests.support.fault_fleet import (
    BRAIN,
    DISPATCHER,
    RECLAIMER,
    WORKER,
    Workload,
    await_healthy,
    fault_fleet,
    kill_and_await_restart,
    owned_fault_fleet,
)
from tests.support.owned import flush_own

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["owned-postgres", "embedded"])
def fleet(request, tmp_path_factory):
    """A supervised fault fleet on servers of its own, or on the embedded default."""
    root = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:
        if request.param == "owned-postgres":
            running, broker, _ = stack.enter_context(owned_fault_fleet(root))
        else:  # the launcher starts its own redis-server; the ledger is SQLite under the fleet's home
            running = stack.enter_context(fault_fleet(fleet_settings(root)))
            broker = running.broker
        BROKERS[id(running)] = broker
        yield running
        del BROKERS[id(running)]


BROKERS: dict[int, Any] = {}
"""The redis-server each module fleet runs on, which this module started itself (the only one it may flush)."""


@pytest.fixture
def work(fleet, tmp_path):
    """A fresh batch of runs on a healthy fleet."""
    await_healthy(fleet)
    with Workload(fleet, tmp_path / "gate") as batch:
        yield batch


@pytest.mark.parametrize("label", [BRAIN, DISPATCHER])
def test_a_killed_coordinator_process_is_restarted_and_every_run_completes(label, fleet, work):
    work.submit()
    work.await_mid_run()
    old, new = kill_and_await_restart(fleet, label)
    assert new != old
    work.assert_completed()


def test_a_killed_worker_is_restarted_and_the_assignment_it_held_runs_again_once(fleet, work):
    work.submit()
    work.await_mid_run()
    work.arm()
    task, attempt, pid = work.await_held()  # the worker is inside this attempt's handler
    old, new = kill_and_await_restart(fleet, WORKER)
    work.release()
    work.assert_completed()
    starts, ends = work.marks("starts"), work.marks("ends")
    assert (attempt, pid) == (1, old)
    assert (task, 1, old) in starts and not [e for e in ends if e[0] == task and e[1] == 1]  # killed mid-handler
    assert [(a, p) for t, a, p in ends if t == task] == [(2, new)]  # the next attempt, on the new worker, once
    assert task in [r.message_id for r in work.audit("lease_expired")]  # the reclaimer took the lease back


def test_a_killed_reclaimer_is_restarted_and_still_resends_what_the_broker_lost(fleet, work):
    work.submit()
    work.await_mid_run()
    work.arm()
    work.await_held()
    kill_and_await_restart(fleet, RECLAIMER)
    restarted_at = time.time()
    work.await_waiting_in_broker()  # steps the held worker has not taken: only the broker holds their messages
    flush_own(BROKERS[id(fleet)])  # the server this module started: those messages are lost
    work.release()
    work.assert_completed()
    assert [r for r in work.audit("reclaimed") if r.created_at >= restarted_at], \
        "the restarted reclaimer re-sent nothing, yet the flushed steps completed"
