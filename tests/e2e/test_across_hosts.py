"""The fleet across three hosts (network namespaces): a workers' host cut off mid-run loses and repeats no outcome."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import Engine, select

from bus.db import make_engine
from bus.schema import agent_messages as m
from bus.schema import bus_events
from coordinator.client import Client
from tests.e2e.conftest import CORE, SLOW_WORKER, TABLE, fleet_settings
from tests.support.invariants import assert_ledger_held
from tests.support.netns import HostFleet, Network, network
from tests.support.owned import OwnedPostgres, OwnedRedis
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

RUNS = 4
SLEEP_S = 4.0
"""How long a first attempt works: long enough that host C is cut off while both its workers hold one."""
WORKERS = replace(SLOW_WORKER, replicas=2)


@dataclass
class Hosts:
    """A fleet across hosts: A the ledger and broker, B the API, brain, dispatcher and reclaimer, C the workers."""

    net: Network
    database_url: str
    engine: Engine  # from the test's own namespace, across the switch to host A
    client: Client
    marks: Path

    def submit(self, *, sleep_s: float) -> str:
        """One ``slow`` run whose first attempt works ``sleep_s``."""
        return self.client.submit("slow", tenant="acme", payload={"marks_dir": str(self.marks), "sleep_s": sleep_s})


@pytest.fixture
def hosts(tmp_path) -> Iterator[Hosts]:
    """The fleet across hosts A, B and C; every process, server, namespace and interface removed after."""
    marks = tmp_path / "marks"
    marks.mkdir()
    quiet = {"console": Console(quiet=True), "show_logs": False}
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(network("a", "b", "c"))
        a, b, c = net["a"], net["b"], net["c"]
        database = OwnedPostgres(host=a.address, prefix=a.prefix)  # listening on A's address only
        stack.callback(database.destroy)
        database.start()
        broker = OwnedRedis(tmp_path / "broker", host=a.address, prefix=a.prefix)
        stack.callback(broker.stop)
        broker.start()
        settings = fleet_settings(tmp_path, broker_url=broker.url, database_url=database.url, api_host=b.address)
        core = stack.enter_context(HostFleet(settings, host=b, only=CORE, processes=TABLE, **quiet))
        stack.enter_context(HostFleet(core.settings, host=c, only=[WORKERS.name], processes=[WORKERS], **quiet))
        engine = make_engine(database.url)
        stack.callback(engine.dispose)
        client = stack.enter_context(Client(core.api_url, api_key=core.api_key))
        yield Hosts(net, database.url, engine, client, marks)


def _marks(marks: Path, name: str) -> list[tuple[str, int]]:
    """``(assignment_id, attempt)`` of every handler start (``starts``) or end (``ends``) the slow worker recorded."""
    path = marks / name
    lines = path.read_text().splitlines() if path.exists() else []
    return [(task, int(attempt)) for task, attempt, _pid in (line.split() for line in lines)]


def _running(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(m.c.id).where(m.c.kind == "assignment", m.c.status == "running")))


def _audit(engine: Engine, kind: str) -> list[tuple[str, int]]:
    """``(message_id, attempt)`` of every ``bus_events`` row of ``kind``."""
    with engine.connect() as conn:
        return [(r.message_id, r.attempt) for r in conn.execute(
            select(bus_events.c.message_id, bus_events.c.attempt).where(bus_events.c.kind == kind))]


def _expired(engine: Engine) -> set[str]:
    return {task for task, _ in _audit(engine, "lease_expired")}


def test_workers_host_cut_off_mid_run_every_run_ends_each_outcome_once(hosts):
    c = hosts.net["c"]
    run_ids = [hosts.submit(sleep_s=SLEEP_S) for _ in range(RUNS)]
    wait_until(lambda: len(_marks(hosts.marks, "starts")) >= WORKERS.replicas, timeout=60,
               message="every worker on host C to start a first attempt")
    with hosts.net.cut_off(c):
        held = _running(hosts.engine)  # the attempts host C holds as it goes dark
        assert held, "no attempt was running on host C when it was cut off"
        wait_until(lambda: held <= _expired(hosts.engine), timeout=60,
                   message="the reclaimer on host B to take back every lease host C held")
    runs = [hosts.client.wait(run_id, timeout_s=90) for run_id in run_ids]
    # Back on the network, host C reports the outcomes of the attempts it held, late: each is refused.
    wait_until(lambda: {(task, 1) for task in held} <= set(_audit(hosts.engine, "execute_fenced")), timeout=60,
               message="host C's late outcomes of the attempts it held to be refused (execute_fenced)")
    completed = [hosts.client.events(run_id, type="decision.task.completed") for run_id in run_ids]

    assert [r["status"] for r in runs] == ["completed"] * RUNS, runs
    assert_ledger_held(hosts.engine, expect_runs=RUNS, roots=run_ids)
    # At least once: each attempt host C held ran its handler to the end, and so did the retry after it ...
    starts, ends = Counter(_marks(hosts.marks, "starts")), Counter(_marks(hosts.marks, "ends"))
    for task in held:
        assert starts[(task, 1)] == starts[(task, 2)] == 1, (task, starts)
        assert ends[(task, 1)] == ends[(task, 2)] == 1, (task, ends)
    # ... and each outcome was applied once: the retry's for the attempts host C held, one per assignment.
    done = _audit(hosts.engine, "execute_done")
    assert sorted(attempt for task, attempt in done if task in held) == [2] * len(held), done
    assert len(done) == len({task for task, _ in done}) == RUNS, done
    assert [len(events) for events in completed] == [1] * RUNS, completed


RENEWAL_CAUGHT_MID_FLIGHT = """
import pathlib, sys, time
from bus import ledger
from bus.db import make_engine
url, task, mark = sys.argv[1:]
with make_engine(url).begin() as conn:
    assert ledger.renew_lease(conn, task, attempt=1, lease_s=3.0, now=time.time())
    pathlib.Path(mark).touch()
    time.sleep(600)  # the COMMIT has not left when the host goes dark
"""
"""A worker's lease renewal (``LeaseKeeper._renew``) caught between its UPDATE and its COMMIT, as a cut may catch it."""


def test_lease_is_taken_back_from_a_host_cut_off_inside_a_transaction(hosts):
    c = hosts.net["c"]
    hosts.submit(sleep_s=8.0)  # still working when host C goes dark
    wait_until(lambda: _marks(hosts.marks, "starts"), timeout=60, message="a worker on host C to start an attempt")
    (task, _attempt), = _marks(hosts.marks, "starts")
    renewed = hosts.marks / "renewed"
    renewal = subprocess.Popen([*c.prefix, sys.executable, "-c", RENEWAL_CAUGHT_MID_FLIGHT, hosts.database_url, task,
                                str(renewed)])
    try:
        wait_until(renewed.exists, timeout=30, message="the renewal on host C to take its row lock")
        with hosts.net.cut_off(c):
            wait_until(lambda: task in _expired(hosts.engine), timeout=45,
                       message="the reclaimer on host B to take back the lease host C held")
    finally:
        renewal.kill()
        renewal.wait(10)
