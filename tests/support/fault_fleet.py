"""A supervised fleet of real processes for fault tests, its workload, and the moments a fault is injected at.

The workload is ``fault-fanout`` (``tests/e2e/workflows/fault-fanout.yaml``): per run a budgeted foreach of
``fault.step`` tasks served by ``test-fault-worker`` (below), joined, then one ``rag.embed`` on the real
rag-embed worker. A step meters tokens and takes ``step_s``, so a batch of runs is in flight for a few
seconds; no step starts before the whole batch is in the ledger. A step can also be *held*: once the test arms
the gate, the next first attempt to start waits until the gate opens — so "the worker holds an assignment" is
a state the test observes, not a guess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
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
from tests.e2e.conftest import CORE, fleet_settings
from tests.support.invariants import assert_ledger_held
from tests.support.owned import OwnedPostgres, OwnedRedis
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
    """Wait for the batch to be under way (``go``), record the start, meter ``STEP_TOKENS``, take ``step_s`` —
    or, if the gate is armed and no attempt holds it yet, hold until the gate opens — and record the end. Marks
    go to ``gate_dir`` (``starts``, ``ends``, ``held``: ``<task> <attempt> <pid>``)."""
    gate = Path(payload["gate_dir"])
    while not (gate / "go").exists():  # until the whole batch is in the ledger (``Workload.submit``)
        ctx.check_deadline()
        time.sleep(0.05)
    mark = f"{ctx.assignment_id} {ctx.attempt} {os.getpid()}"
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


@contextlib.contextmanager
def owned_fault_fleet(root: Path) -> Iterator[tuple[Fleet, OwnedRedis, OwnedPostgres]]:
    """``fault_fleet`` on a redis-server and a PostgreSQL cluster of its own, which a test may flush, restart
    or cut: ``(fleet, broker, database)``; everything is stopped and removed after the block."""
    with contextlib.ExitStack() as stack:
        database = OwnedPostgres()
        stack.callback(database.destroy)
        database.start()
        broker = OwnedRedis(root / "owned-redis").start()
        stack.callback(broker.stop)
        settings = fleet_settings(root, broker_url=broker.url, database_url=database.url)
        yield stack.enter_context(fault_fleet(settings)), broker, database


def await_healthy(fleet: Fleet, timeout_s: float = 60.0) -> None:
    """Wait until every child runs and is ready (one restarted by an earlier fault included)."""
    wait_until(lambda: all(c.poll() is None and c.is_ready() for c in fleet.children), timeout=timeout_s,
               interval=0.1, message="every process of the fleet to run and be ready")
    assert not fleet.crash_looping, fleet.crash_looping


def pids(fleet: Fleet) -> dict[str, int | None]:
    """Each child's pid: a process the supervisor restarted has a new one."""
    return {c.label: c.pid for c in fleet.children}


def child(fleet: Fleet, label: str) -> Child:
    """The fleet's child called ``label``."""
    return next(c for c in fleet.children if c.label == label)


def kill_and_await_restart(fleet: Fleet, label: str, timeout_s: float = 60.0) -> tuple[int, int]:
    """``kill -9`` the process group of ``label``; wait until the supervisor restarted it and it is ready again
    (and no other process died meanwhile).

    Returns:
        ``(old_pid, new_pid)``.
    """
    target, before = child(fleet, label), pids(fleet)
    old = target.pid
    assert old is not None and target.poll() is None, f"{label} is not running"
    target.signal_group(signal.SIGKILL)
    wait_until(lambda: target.pid != old and target.poll() is None and target.is_ready(), timeout=timeout_s,
               interval=0.1, message=f"{label} (pid {old}, killed) to be restarted and ready")
    assert not fleet.crash_looping, fleet.crash_looping
    assert {k: v for k, v in pids(fleet).items() if k != label} == {k: v for k, v in before.items() if k != label}, \
        "another process died too"
    return old, target.pid


class Logs:
    """What some processes of the fleet log from now on (their files under ``<home>/logs``, appended across
    restarts)."""

    def __init__(self, fleet: Fleet, labels: list[str]):
        self.paths = [child(fleet, label).log_path for label in labels]
        self.start = {p: p.stat().st_size if p.exists() else 0 for p in self.paths}

    def contain(self, text: str) -> bool:
        """Whether any of them logged ``text`` since."""
        for path in self.paths:
            with open(path, "rb") as f:
                f.seek(self.start[path])
                if text.encode() in f.read():
                    return True
        return False


def _ended(seen: Counter) -> int:
    return seen[ledger.DONE] + seen[ledger.SETTLED] + seen[ledger.FAILED] + seen[ledger.DEAD]


def _open(seen: Counter) -> int:
    return sum(seen[s] for s in ledger.OPEN)


# -- the workload -------------------------------------------------------------------------------------------
class Workload:
    """``runs`` runs of ``fault-fanout`` with ``items`` steps each, watched through the ledger and the API; every
    question it asks the ledger is about its own runs (a fleet may serve several tests in turn).

    Args:
        fleet: the running fleet.
        gate_dir: where the steps keep their marks and the test its gate.
        workflow: ``fault-fanout``, or ``fault-single`` (one step, one attempt; ``items=1``).
        step_s: how long an unheld step takes.
    """

    def __init__(self, fleet: Fleet, gate_dir: Path, *, workflow: str = "fault-fanout", runs: int = 8, items: int = 4,
                 step_s: float = 0.1):
        self.fleet, self.gate, self.workflow = fleet, gate_dir, workflow
        self.runs, self.items, self.step_s = runs, items, step_s
        self.gate.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(fleet.settings.database_url)
        self.client = Client(fleet.api_url, api_key=fleet.api_key, timeout_s=30.0)
        self.tenant = f"faults-{uuid.uuid4().hex[:8]}"
        self.run_ids: list[str] = []

    def close(self) -> None:
        """Close the client and dispose of the engine."""
        self.client.close()
        self.engine.dispose()

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def steps(self) -> int:
        """How many ``fault.step`` assignments the batch makes (first attempts)."""
        return self.runs * self.items

    def submit(self) -> list[str]:
        """Submit every run of the batch and let the steps go once all of them are in the ledger; the run ids.

        No step starts before: on a loaded machine the first runs could otherwise be over before the last is
        submitted, and a batch that is never half under way has no middle to put a fault in.
        """
        payload = {"items": list(range(self.items)), "gate_dir": str(self.gate), "step_s": self.step_s,
                   "documents": [DOCUMENT]}
        self.run_ids = [self.client.submit(self.workflow, tenant=self.tenant, payload=payload)
                        for _ in range(self.runs)]
        self._await(lambda seen: sum(seen.values()) == self.steps, 90.0, f"all {self.steps} steps in the ledger")
        (self.gate / "go").touch()
        return self.run_ids

    # -- what the ledger says ---------------------------------------------------------------------------
    def step_statuses(self) -> Counter:
        """How many ``fault.step`` assignments are in each status."""
        with self.engine.connect() as conn:
            return Counter(dict(conn.execute(select(m.c.status, func.count()).where(
                m.c.kind == "assignment", m.c.service == "fault", m.c.role == "step", m.c.run_id.in_(self.run_ids))
                .group_by(m.c.status)).all()))

    def audit(self, kind: str) -> list:
        """The ``bus_events`` rows of ``kind`` (message id, attempt, time), oldest first."""
        with self.engine.connect() as conn:
            return conn.execute(select(bus_events.c.message_id, bus_events.c.attempt, bus_events.c.created_at)
                                .where(bus_events.c.kind == kind, bus_events.c.run_id.in_(self.run_ids))
                                .order_by(bus_events.c.id)).all()

    def crashes_counted(self) -> list:
        """Brain events whose handling was counted as a crash (``attempts`` only ever grows on a crash)."""
        with self.engine.connect() as conn:
            return conn.execute(select(m.c.id, m.c.kind, m.c.attempts, m.c.last_error)
                                .where(m.c.kind != "assignment", m.c.attempts > 0, m.c.run_id.in_(self.run_ids))).all()

    # -- the moment of the fault ------------------------------------------------------------------------
    def await_mid_run(self, timeout_s: float = 90.0) -> Counter:
        """Wait until some steps have ended while at least half of them have not; the statuses seen then."""
        return self._await(lambda seen: _ended(seen) >= 1 and _open(seen) >= self.steps // 2, timeout_s,
                           "some steps ended, half of them not")

    def steps_open(self) -> int:
        """How many steps have not ended."""
        return _open(self.step_statuses())

    def await_progress(self, timeout_s: float = 90.0) -> Counter:
        """Wait until one more step has ended than now, or every step has; the statuses seen then."""
        ended = _ended(self.step_statuses())
        return self._await(lambda seen: _ended(seen) > ended or _open(seen) == 0, timeout_s,
                           f"a step to end after the {ended} ended so far")

    def await_waiting_in_broker(self, count: int = 3, timeout_s: float = 90.0) -> Counter:
        """With the worker held, wait until ``count`` more steps were dispatched to it: their messages wait in the
        broker (the held worker has taken at most one more); the statuses seen then."""
        return self._await(lambda seen: seen[ledger.DISPATCHED] >= count, timeout_s,
                           f"{count} steps dispatched to the held worker")

    def _await(self, holds, timeout_s: float, what: str) -> Counter:
        seen: list[Counter] = [Counter()]

        def check() -> Counter | None:
            seen[0] = self.step_statuses()
            return seen[0] if holds(seen[0]) else None

        try:
            return wait_until(check, timeout=timeout_s, interval=0.05, message=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; step statuses: {dict(seen[0])}; open rows: {self._open_summary()}; "
                                 f"processes: {[(c.label, c.pid, c.poll()) for c in self.fleet.children]}") from None

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

    def assert_completed(self) -> None:
        """Every run of the batch completed with every step joined; no fault was taken for a poison message (no
        brain crash counted, no event rejected, no admission denied); the ledger held for these runs."""
        runs = self.await_ended()
        assert [r["status"] for r in runs] == ["completed"] * self.runs, \
            [(r["id"], r["status"], r["error"]) for r in runs]
        assert all(r["output"]["steps"] == list(range(self.items)) for r in runs), [r["output"] for r in runs]
        assert self.crashes_counted() == []
        assert self.audit("event_rejected") == [] and self.audit("policy_denied") == []
        assert_ledger_held(self.engine, expect_runs=self.runs, roots=self.run_ids)

    def _open_summary(self) -> dict[str, int]:
        """How many open rows of these runs there are per route and status."""
        return dict(Counter(f"{r.service}.{r.role}:{r.status}" for r in self._open_rows() if not isinstance(r, str)))

    def _open_rows(self) -> list:
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(m.c.id, m.c.kind, m.c.service, m.c.role, m.c.status, m.c.attempts,
                                           m.c.updated_at, m.c.published_at, m.c.last_error)
                                    .where(m.c.status.in_(sorted(ledger.OPEN)), m.c.run_id.in_(self.run_ids))).all()
        except SQLAlchemyError as exc:
            return [f"(ledger unreadable: {exc})"]
