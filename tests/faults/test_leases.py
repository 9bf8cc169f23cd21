"""Leases across real processes: a frozen worker past its lease is fenced off; a long handler keeps its lease."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import select

from bus.db import make_engine
from bus.schema import agent_messages as m
from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.invariants import assert_ledger_held
from tests.support.slow_worker import release_file
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

QUIET = {"console": Console(quiet=True), "show_logs": False, "processes": TABLE}
WORKER = "test-slow-worker"


def marked(marks: Path, name: str) -> list[tuple[int, int]]:
    """``(attempt, pid)`` of every line the slow worker appended to ``marks/name``."""
    path = marks / name
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(attempt), int(pid)) for _, attempt, pid in (line.split() for line in lines)]


def assignment_row(url: str, run_id: str):
    """The run's one assignment row, read straight from the ledger."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(m).where(m.c.run_id == run_id, m.c.kind == "assignment")).one()
    finally:
        engine.dispose()


def ledger_held(url: str, run_id: str) -> None:
    engine = make_engine(url)
    try:
        assert_ledger_held(engine, expect_runs=1, roots=[run_id])
    finally:
        engine.dispose()


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
@pytest.mark.parametrize("wake", ["after_the_run", "while_attempt_2_runs"])
def test_a_worker_frozen_past_its_lease_is_fenced_off_when_it_wakes(tmp_path, ledger, wake, owned_redis,
                                                                    engine_url_for):
    """``after_the_run``: the row is already settled. ``while_attempt_2_runs``: the row is ``running`` again, so
    only the attempt number (the fencing token) tells the zombie's write from attempt 2's."""
    marks = tmp_path / "marks"
    marks.mkdir()
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url, database_url=engine_url_for(ledger))
    hold = [1] if wake == "after_the_run" else [1, 2]
    with Fleet(settings, only=CORE, free_ports=True, **QUIET) as fleet, \
            Client(fleet.api_url, api_key=fleet.api_key) as client:
        with Fleet(fleet.settings, only=[WORKER], **QUIET) as first:
            zombie = first.children[0]
            run_id = client.submit("lease-zombie", tenant="acme", payload={"marks_dir": str(marks), "hold": hold})
            wait_until(lambda: marked(marks, "starts"), timeout=60, message="the first attempt to start")
            zombie.signal_group(signal.SIGSTOP)  # frozen while it holds attempt 1: its lease is no longer renewed
            try:
                # Started only now, so the zombie was the only worker when attempt 1 was dispatched.
                with Fleet(fleet.settings, only=[WORKER], **QUIET):
                    if wake == "after_the_run":
                        client.wait(run_id, timeout_s=90)
                    else:
                        wait_until(lambda: len(marked(marks, "starts")) == 2, timeout=60, message="attempt 2 to start")
                    release_file(marks, 1).touch()  # the zombie's handler finishes as soon as it runs again
                    zombie.signal_group(signal.SIGCONT)
                    # Observed, not waited out: the runtime audits every write its fence refused.
                    fenced = wait_until(lambda: [b for b in client.bus_events(run_id) if b["kind"] == "execute_fenced"],
                                        timeout=60, message="the zombie's late outcome to be fenced off")
                    release_file(marks, 2).touch()
                    run = client.wait(run_id, timeout_s=90)
            finally:
                zombie.signal_group(signal.SIGCONT)
            assert zombie.poll() is None  # it survived its lost lease, and keeps serving
        audit = [(b["kind"], b["attempt"]) for b in client.bus_events(run_id)]
        completed = client.events(run_id, type="decision.task.completed")
        started = client.events(run_id, type="dispatch.assignment.started")
    row = assignment_row(fleet.settings.database_url, run_id)

    starts, ends = marked(marks, "starts"), marked(marks, "ends")
    assert [a for a, _ in starts] == [1, 2] and starts[0][1] == zombie.pid != starts[1][1]
    assert sorted(ends) == sorted(starts)  # both handlers ran to the end: the zombie's too, so the fence stopped it
    assert run["status"] == "completed", run
    assert run["output"]["work"] == {"attempt": 2, "pid": starts[1][1]}
    assert (row.status, row.attempts) == ("settled", 2)
    assert '"attempt":2' in row.result_snippet  # the ledger keeps attempt 2's outcome
    assert [e["data"]["attempt"] for e in started] == [1, 2]
    assert len(completed) == 1  # the outcome was planned once
    done, late = [("execute_done", 2)], [("execute_fenced", 1)]
    assert audit == [("execute_enqueued", 1), ("lease_expired", 1), ("execute_enqueued", 2),
                     *(done + late if wake == "after_the_run" else late + done)], audit
    assert fenced[0]["detail"] == {"to": "done"}
    ledger_held(fleet.settings.database_url, run_id)


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
def test_a_handler_three_leases_long_keeps_its_lease(tmp_path, ledger, owned_redis, engine_url_for):
    marks = tmp_path / "marks"
    marks.mkdir()
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url, database_url=engine_url_for(ledger))
    with Fleet(settings, only=[*CORE, WORKER], free_ports=True, **QUIET) as fleet, \
            Client(fleet.api_url, api_key=fleet.api_key) as client:
        run_id = client.submit("lease-long", tenant="acme",
                               payload={"marks_dir": str(marks), "sleep_s": 3.5 * fleet.settings.lease_s})
        run = client.wait(run_id, timeout_s=120)
        audit = [b["kind"] for b in client.bus_events(run_id)]
        started = client.events(run_id, type="dispatch.assignment.started")

    assert run["status"] == "completed", run
    assert [a for a, _ in marked(marks, "starts")] == [1]  # one attempt: the lease was renewed, never reclaimed
    assert [a for a, _ in marked(marks, "ends")] == [1]
    assert len(started) == 1
    assert "lease_expired" not in audit
    assert audit == ["execute_enqueued", "execute_done"]
    assert run["output"]["work"]["attempt"] == 1
    ledger_held(fleet.settings.database_url, run_id)
