"""Ephemeral workers end to end: a real fleet whose test worker runs each assignment in a fresh child process.

The worker ``test-ephemeral-worker`` is made ephemeral the way an operator does it (``COGO_EPHEMERAL``); its
handler records ``<assignment> <attempt> <pid>`` when an attempt starts and ends, so the test sees which process
ran what. Each scenario is one run on one fleet shared by the module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bus.settings import Settings
from coordinator.client import Client
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES, Process
from tests.e2e.conftest import CORE, fleet_settings
from tests.support.waiting import wait_until
from workers.handler import WorkContext, WorkResult

pytestmark = pytest.mark.e2e

WORKER = Process("test-ephemeral-worker", "celery", "tests.e2e.test_ephemeral:main",
                 "test.ephemeral: records the pid of each attempt", routes=(("test", "ephemeral"),))
GRACE_S = 3.0
"""``COGO_EPHEMERAL_GRACE_S`` of the fleet: the hanging child (TTL 2 s) is killed about 5 s after it started."""


# -- the worker (runs in the fleet's processes) ----------------------------------------------------------------
def _mark(marks: Path, kind: str, ctx: WorkContext) -> None:
    with open(marks / kind, "a", encoding="utf-8") as f:
        f.write(f"{ctx.assignment_id} {ctx.attempt} {os.getpid()}\n")


def _take(path: Path) -> bool:
    """Create ``path`` unless it exists: the first attempt that takes it is the one that holds or hangs."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


def record(ctx: WorkContext, payload: dict) -> WorkResult:
    """Mark the start; in mode ``hold`` the first attempt to start waits for ever (the test kills it), in mode
    ``hang`` it ignores its TTL and sleeps for ever; mark the end; answer this process's pid."""
    marks = Path(payload["marks_dir"])
    _mark(marks, "starts", ctx)
    mode = payload.get("mode")
    if mode in ("hold", "hang") and _take(marks / mode):
        if mode == "hang":
            signal.signal(signal.SIGALRM, signal.SIG_IGN)  # a handler that defeats the in-process TTL
        while True:
            time.sleep(0.05)
    _mark(marks, "ends", ctx)
    return WorkResult(output={"pid": os.getpid(), "attempt": ctx.attempt})


def main(settings: Settings, name: str) -> None:
    """Serve ``test.ephemeral`` as the table's workers are served (``ecosystem.entrypoints``)."""
    from ecosystem.entrypoints import serve_worker

    serve_worker(settings, name, {("test", "ephemeral"): record})


# -- the fleet ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("ephemeral")
    settings = fleet_settings(root, ephemeral=WORKER.name, ephemeral_grace_s=GRACE_S)
    with Fleet(settings, only=[*CORE, WORKER.name], processes=(*PROCESSES, WORKER), free_ports=True,
               console=Console(quiet=True), show_logs=False, env={"PYTHONUNBUFFERED": "1"}) as running:
        yield running


@contextlib.contextmanager
def client_of(fleet: Fleet) -> Iterator[Client]:
    with Client(fleet.api_url, api_key=fleet.api_key) as client:
        yield client


def consumer(fleet: Fleet):
    return next(c for c in fleet.children if c.process.name == WORKER.name)


def marks_of(path: Path) -> list[tuple[str, int, int]]:
    """``(assignment, attempt, pid)`` per line of a marks file (none when it does not exist)."""
    if not path.exists():
        return []
    return [(a, int(n), int(p)) for a, n, p in (line.split() for line in path.read_text().splitlines())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def consumer_log(fleet: Fleet) -> str:
    return consumer(fleet).log_path.read_text(errors="replace")


# -- the scenarios ----------------------------------------------------------------------------------------------
def test_each_assignment_runs_in_a_fresh_process_that_exits(fleet, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    worker_pid = consumer(fleet).pid
    with client_of(fleet) as client:
        run_id = client.submit("ephemeral-chain", tenant="acme", payload={"marks_dir": str(marks), "mode": "run"})
        run = client.wait(run_id, timeout_s=120)
        completed = client.events(run_id, type="dispatch.assignment.completed")
    assert run["status"] == "completed", run
    starts, ends = marks_of(marks / "starts"), marks_of(marks / "ends")
    assert len(starts) == 3 and [attempt for _, attempt, _ in starts] == [1, 1, 1]
    assert sorted(ends) == sorted(starts)  # every attempt ended in the process it started in
    pids = [pid for _, _, pid in starts]
    assert len(set(pids)) == 3, pids  # three assignments, three processes
    assert worker_pid not in pids  # none ran in the consumer
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30,
               message="each child to exit once its outcome is written")
    assert len(completed) == 3
    assert consumer(fleet).pid == worker_pid and consumer(fleet).poll() is None


def test_a_child_killed_mid_assignment_loses_its_attempt_and_the_run_completes(fleet, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    worker_pid = consumer(fleet).pid
    with client_of(fleet) as client:
        run_id = client.submit("ephemeral-chain", tenant="acme", payload={"marks_dir": str(marks), "mode": "hold"})
        wait_until(lambda: (marks / "hold").exists() and marks_of(marks / "starts"), timeout=60,
                   message="the first attempt to hold its assignment")
        held, attempt, child_pid = marks_of(marks / "starts")[0]
        assert attempt == 1 and child_pid != worker_pid
        os.kill(child_pid, signal.SIGKILL)
        run = client.wait(run_id, timeout_s=120)
        audit = [(b["message_id"], b["kind"]) for b in client.bus_events(run_id)]
    assert run["status"] == "completed", run
    retried = [(attempt, pid) for a, attempt, pid in marks_of(marks / "starts") if a == held]
    assert [attempt for attempt, _ in retried] == [1, 2]
    assert retried[1][1] not in (child_pid, worker_pid)  # the retry ran in a fresh process of its own
    assert [a for a, attempt, _ in marks_of(marks / "ends") if a == held] == [held]  # only attempt 2 ended
    assert (held, "lease_expired") in audit  # the lease rule took the killed attempt back
    assert consumer(fleet).pid == worker_pid and consumer(fleet).poll() is None  # the consumer lived on
    assert f"ephemeral child of {held} exited with code -9" in consumer_log(fleet)


def test_a_child_that_outlives_its_ttl_is_killed_and_its_attempt_retried(fleet, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    worker_pid = consumer(fleet).pid
    with client_of(fleet) as client:
        run_id = client.submit("ephemeral-hang", tenant="acme", payload={"marks_dir": str(marks), "mode": "hang"})
        run = client.wait(run_id, timeout_s=120)
        audit = [b["kind"] for b in client.bus_events(run_id)]
    assert run["status"] == "completed", run
    starts = marks_of(marks / "starts")
    assert [attempt for _, attempt, _ in starts] == [1, 2]
    hung = starts[0][2]
    assert not alive(hung)  # killed by its consumer, which the in-process TTL could not do
    assert [attempt for _, attempt, _ in marks_of(marks / "ends")] == [2]
    assert "lease_expired" in audit
    log = consumer_log(fleet)
    assert f"ephemeral child of {starts[0][0]} was still running" in log and "killed (exit -9)" in log
    assert consumer(fleet).pid == worker_pid
