"""A supervised fleet of real processes for fault tests, its workload, and the moments a fault is injected at.

The workload is ``fault-fanout`` (``tests/e2e/workflows/fault-fanout.yaml``): per run a budgeted foreach of
``fault.step`` tasks served by ``test-fault-worker`` (below), joined, then one ``rag.embed`` on the real
rag-embed worker. A step meters tokens and takes ``step_s``, so a batch of runs is in flight for a few
seconds. The step can also be *held*: once the test arms the gate, the next first attempt to start waits
until the gate opens — so "the worker holds an assignment" is a state the test observes, not a guess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from bus import ledger
from bus.db import make_engine
from bus.schema import agent_messages as m
from bus.schema import bus_events
from bus.settings import Settings
from coordinator.client import TERMINAL, ApiError, Client
from ecosystem.child import Child
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES, Process
from tests.e2e.conftest import CORE
from tests.support.supervised import supervised
from tests.support.waiting import wait_until
from workers.handler import WorkContext, WorkResult

FAULT_WORKER = Process("test-fault-worker", "celery", "tests.support.fault_fleet:main",
                       "fault.step for fault tests", routes=(("fault", "step"),))
TABLE = (*PROCESSES, FAULT_WORKER)
BRAIN, DISPATCHER, RECLAIMER, WORKER = ("cogo-orchestrator-brain", "cogo-executor-dispatcher", "cogo-bus-reclaimer",
                                        FAULT_WORKER.name)
FLEET = [*CORE, "cogo-rag-embed", WORKER]
STEP_TOKENS = 10
"""What one attempt of a step meters (its budget is 100, the run's 300)."""
DOCUMENT = {"id": "d1", "text": "Cogo keeps its ledger true whatever breaks around it."}


# -- the worker ---------------------------------------------------------------------------------------------
def _append(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def step(ctx: WorkContext, payload: dict) -> WorkResult:
    """Record the start, meter ``STEP_TOKENS``, take ``step_s`` — or, if the gate is armed and no attempt holds
    it yet, hold until the gate opens — and record the end. Marks go to ``gate_dir`` (``starts``, ``ends``,
    ``held``: ``<task> <attempt> <pid>``)."""
    gate = Path(payload["gate_dir"])
    mark = f"{ctx.task_id} {ctx.attempt} {os.getpid()}"
    _append(gate / "starts", mark)
    ctx.meter(tokens=STEP_TOKENS)
    if ctx.attempt == 1 and (gate / "armed").exists() and _take(gate / "held", mark):
        while not (gate / "open").exists():
            ctx.check_deadline()
            time.sleep(0.05)
    else:
        time.sleep(float(payload.get("step_s") or 0))
    _append(gate / "ends", mark)
    return WorkResult(output={"item": payload.get("item"), "attempt": ctx.attempt})


def _take(path: Path, mark: str) -> bool:
    """Create ``path`` holding ``mark`` unless it exists: only one attempt ever holds the gate."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(mark + "\n")
    return True


def main(settings: Settings, name: str) -> None:
    """Serve ``fault.step``."""
    from workers.runtime import serve

    serve(settings, name=name, handlers={("fault", "step"): step})


# -- the fleet ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fault_fleet(settings: Settings) -> Iterator[Fleet]:
    """API, brain, dispatcher, reclaimer, rag-embed and the fault worker as separate processes, tended as
    ``cogo up`` tends them (a child that dies is restarted with backoff) while the block runs."""
    with Fleet(settings, only=FLEET, processes=TABLE, free_ports=True, console=Console(quiet=True),
               show_logs=False, env={"PYTHONUNBUFFERED": "1"}) as fleet, supervised(fleet):
        yield fleet


def child(fleet: Fleet, label: str) -> Child:
    """The fleet's child called ``label``."""
    return next(c for c in fleet.children if c.label == label)


def kill_and_await_restart(fleet: Fleet, label: str, timeout_s: float = 60.0) -> tuple[int, int]:
    """``kill -9`` the process group of ``label``; wait until the supervisor restarted it and it is ready again.

    Returns:
        ``(old_pid, new_pid)``.
    """
    target = child(fleet, label)
    old = target.pid
    assert old is not None and target.poll() is None, f"{label} is not running"
    target.signal_group(signal.SIGKILL)
    wait_until(lambda: target.pid != old and target.poll() is None and target.is_ready(), timeout=timeout_s,
               interval=0.1, message=f"{label} (pid {old}, killed) to be restarted and ready")
    assert not fleet.crash_looping, fleet.crash_looping
    return old, target.pid


# -- the workload -------------------------------------------------------------------------------------------
class Workload:
    """``runs`` runs of ``fault-fanout`` with ``items`` steps each, watched through the ledger and the API.

    Args:
        fleet: the running fleet.
        gate_dir: where the steps keep their marks and the test its gate.
        step_s: how long an unheld step takes.
    """

    def __init__(self, fleet: Fleet, gate_dir: Path, *, runs: int = 8, items: int = 4, step_s: float = 0.1):
        self.fleet, self.gate, self.runs, self.items, self.step_s = fleet, gate_dir, runs, items, step_s
        self.gate.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(fleet.settings.database_url)
        self.client = Client(fleet.api_url, api_key=fleet.api_key, timeout_s=30.0)
        self.run_ids: list[str] = []

    def close(self) -> None:
        """Close the client and dispose of the engine."""
        self.client.close()
        self.engine.dispose()

    @property
    def steps(self) -> int:
        """How many ``fault.step`` assignments the batch makes (first attempts)."""
        return self.runs * self.items

    def submit(self) -> list[str]:
        """Submit every run of the batch; their ids."""
        payload = {"items": list(range(self.items)), "gate_dir": str(self.gate), "step_s": self.step_s,
                   "documents": [DOCUMENT]}
        self.run_ids = [self.client.submit("fault-fanout", tenant="faults", payload=payload)
                        for _ in range(self.runs)]
        return self.run_ids

    # -- what the ledger says ---------------------------------------------------------------------------
    def step_statuses(self) -> Counter:
        """How many ``fault.step`` assignments are in each status."""
        with self.engine.connect() as conn:
            return Counter(dict(conn.execute(select(m.c.status, func.count()).where(
                m.c.kind == "assignment", m.c.service == "fault", m.c.role == "step").group_by(m.c.status)).all()))

    def audit(self, kind: str) -> list:
        """The ``bus_events`` rows of ``kind`` (message id, attempt, time), oldest first."""
        with self.engine.connect() as conn:
            return conn.execute(select(bus_events.c.message_id, bus_events.c.attempt, bus_events.c.created_at)
                                .where(bus_events.c.kind == kind).order_by(bus_events.c.id)).all()

    def crashes_counted(self) -> list:
        """Brain events whose handling was counted as a crash (``attempts`` only ever grows on a crash)."""
        with self.engine.connect() as conn:
            return conn.execute(select(m.c.id, m.c.kind, m.c.attempts, m.c.last_error)
                                .where(m.c.kind != "assignment", m.c.attempts > 0)).all()

    # -- the moment of the fault ------------------------------------------------------------------------
    def await_mid_run(self, *, waiting: int = 4, timeout_s: float = 90.0) -> Counter:
        """Wait until some steps have ended and at least ``waiting`` have been dispatched to the worker but not
        started (their messages sit in the broker); the statuses seen then."""
        def mid_run() -> Counter | None:
            seen = self.step_statuses()
            ended = seen[ledger.DONE] + seen[ledger.SETTLED]
            return seen if ended >= 1 and seen[ledger.DISPATCHED] >= waiting else None

        return wait_until(mid_run, timeout=timeout_s, interval=0.05, message="steps ended while others wait")

    def arm(self) -> None:
        """The next first attempt of a step to start holds until ``release``."""
        (self.gate / "armed").touch()

    def await_held(self, timeout_s: float = 90.0) -> tuple[str, int, int]:
        """Wait until an attempt holds the gate; ``(assignment id, attempt, worker pid)``."""
        held = self.gate / "held"
        wait_until(lambda: held.exists() and held.read_text().endswith("\n"), timeout=timeout_s,
                   message="a step to hold the gate")
        task, attempt, pid = held.read_text().split()
        return task, int(attempt), int(pid)

    def release(self) -> None:
        """Open the gate: the held attempt goes on."""
        (self.gate / "open").touch()

    def marks(self, name: str) -> list[tuple[str, int, int]]:
        """The steps' ``starts`` or ``ends`` marks: ``(assignment id, attempt, pid)``."""
        path = self.gate / name
        lines = path.read_text().splitlines() if path.exists() else []
        return [(t, int(a), int(p)) for t, a, p in (line.split() for line in lines)]

    # -- the end ----------------------------------------------------------------------------------------
    def await_ended(self, timeout_s: float = 120.0) -> list[dict]:
        """Wait until every run of the batch has ended, as the API reports it; the runs.

        An API that cannot reach its ledger for a moment (``ledger.unavailable``) is asked again.
        """
        ended: dict[str, dict] = {}

        def all_ended() -> bool:
            for run_id in [r for r in self.run_ids if r not in ended]:
                try:
                    run = self.client.run(run_id)
                except ApiError as exc:
                    if exc.code in ("ledger.unavailable", "api.unreachable"):
                        return False
                    raise
                if run["status"] in TERMINAL:
                    ended[run_id] = run
            return len(ended) == len(self.run_ids)

        try:
            wait_until(all_ended, timeout=timeout_s, interval=0.2, message="every run to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nledger: {self._open_rows()}\nstatuses: {self.step_statuses()}") from None
        return [ended[r] for r in self.run_ids]

    def _open_rows(self) -> list:
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(m.c.id, m.c.kind, m.c.service, m.c.role, m.c.status, m.c.attempts,
                                           m.c.updated_at, m.c.published_at, m.c.last_error)
                                    .where(m.c.status.in_(sorted(ledger.OPEN)))).all()
        except SQLAlchemyError as exc:
            return [f"(ledger unreadable: {exc})"]
