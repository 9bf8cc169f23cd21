"""The DBOS side of each scenario: DBOS Transact worker processes (``bench/dbos_app.py``) on a system database
of the bench's own, driven from the bench's process through ``DBOSClient``.

The bench enqueues from its own process, as it publishes plain-Celery tasks and posts cogo's intents from its
own: a workflow enqueued inside a worker would compete with that worker for the GIL. Times come from the
workflows themselves (``time.time()`` in the workers, the same clock as the bench's): each no-op step returns
its ``[start, end]``, a one-step workflow the end of its step, a fan-out's parent the moment it had every
child's result. Counts are read from DBOS's ``workflow_status`` table, as cogo's side reads its ledger.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from dbos import DBOSClient
from sqlalchemy import Engine, column, create_engine, func, inspect, make_url, select, table, text

from bench import fleet
from bench.dbos_app import CHAIN3, FANOUT, ONE, POLLING_S, WORKER_CONCURRENCY, queue_name
from bus.db import normalize_url

VARIANTS = tuple(POLLING_S)
LATENCY_VARIANT = "short_polling"
# As cogo's throughput scenario posts its intents from 4 threads.
ENQUEUE_THREADS = 4
RESULT_POLL_S = 0.005
COUNT_POLL_S = 0.25
READY_TIMEOUT_S = 60.0
# DBOS's queue manager looks for newly registered queues once a second and only then starts their threads.
QUEUE_THREAD_START_S = 1.1
UNFINISHED = ("ENQUEUED", "PENDING", "DELAYED")


@dataclass
class Dbos:
    """A client of the running DBOS workers: enqueues through ``DBOSClient``, counts with a read-only engine."""

    kind: str
    client: DBOSClient
    engine: Engine
    pids: list[int]
    polling_s: dict[str, float]
    schema: str | None = field(init=False)
    _status: Any = field(init=False)

    def __post_init__(self) -> None:
        self.schema = "dbos" if self.kind == "postgres" else None  # DBOS's default schema; SQLite has none
        self._status = table("workflow_status", column("workflow_uuid"), column("status"), schema=self.schema)

    def enqueue(self, workflow: str, variant: str, *args: Any, workflow_id: str | None = None) -> Any:
        """Enqueue ``workflow(*args)`` on the variant's queue; its handle."""
        options: dict[str, Any] = {"workflow_name": workflow, "queue_name": queue_name(variant)}
        if workflow_id:
            options["workflow_id"] = workflow_id
        return self.client.enqueue(options, *args)

    def statuses(self, clause: Any) -> dict[str, int]:
        """How many workflows matching ``clause`` are in each status."""
        stmt = select(self._status.c.status, func.count()).where(clause).group_by(self._status.c.status)
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(stmt)}

    def status_of(self, workflow_id: str) -> str | None:
        """The workflow's status (None until its row is there)."""
        stmt = select(self._status.c.status).where(self._status.c.workflow_uuid == workflow_id)
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar_one_or_none()

    def result(self, handle: Any, *, timeout_s: float, poll_s: float = RESULT_POLL_S) -> Any:
        """The workflow's result once it ended (its error raised if it failed); TimeoutError after ``timeout_s``.

        Waits itself rather than through ``get_result``, which has no deadline: a dead worker would hang the bench."""
        deadline = time.monotonic() + timeout_s
        while (status := self.status_of(handle.get_workflow_id())) in (None, *UNFINISHED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"DBOS workflow {handle.get_workflow_id()} still {status} after {timeout_s:.0f}s")
            time.sleep(poll_s)
        return handle.get_result()

    def wait_prefix(self, prefix: str, count: int, *, timeout_s: float) -> None:
        """Wait until ``count`` workflows whose id starts with ``prefix`` succeeded; raise if any did not."""
        deadline = time.monotonic() + timeout_s
        where = self._status.c.workflow_uuid.startswith(prefix, autoescape=True)
        while (counts := self.statuses(where)).get("SUCCESS", 0) < count:
            failed = {s: n for s, n in counts.items() if s not in UNFINISHED and s != "SUCCESS"}
            if failed:
                raise RuntimeError(f"DBOS workflows {prefix}-* ended {failed}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {counts.get('SUCCESS', 0)} of {count} DBOS workflows {prefix}-* "
                                   f"succeeded after {timeout_s:.0f}s")
            time.sleep(COUNT_POLL_S)

    def rows(self) -> int:
        """Rows in every table of the system database: what DBOS has written so far."""
        names = inspect(self.engine).get_table_names(schema=self.schema)
        with self.engine.connect() as conn:
            return sum(conn.execute(select(func.count()).select_from(table(n, schema=self.schema))).scalar_one()
                       for n in names)

    def rss_mib(self) -> list[float]:
        """Each worker process's resident memory (MiB)."""
        return [round(psutil.Process(pid).memory_info().rss / 2**20, 2) for pid in self.pids]

    def idle_cpu_pct(self, window_s: float) -> list[float]:
        """Each worker's CPU (% of one core) over ``window_s`` with nothing enqueued: its queues' polling."""
        procs = [psutil.Process(pid) for pid in self.pids]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        time.sleep(window_s)
        return [round((sum(p.cpu_times()[:2]) - b) / window_s * 100, 2) for p, b in zip(procs, before, strict=True)]


@contextlib.contextmanager
def system_database(kind: str, workdir: Path) -> Iterator[str]:
    """The URL of a fresh DBOS system database of the bench's own, gone afterwards even on failure: a SQLite
    file in ``workdir``, or a database ``bench_dbos_<hex>`` on the PostgreSQL server the cogo ledger uses."""
    if kind == "sqlite":
        workdir.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{workdir / f'dbos-{uuid.uuid4().hex[:8]}.sqlite'}"
        return
    name = f"bench_dbos_{uuid.uuid4().hex[:10]}"
    server = make_url(normalize_url(fleet.POSTGRES_URL))
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:  # FORCE: a worker killed mid-transaction may leave a session behind
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def start_workers(procs: fleet.Processes, url: str, workers: int, workdir: Path) -> list[fleet.Child]:
    """Start ``workers`` DBOS worker processes on ``url`` and wait until each registered its queues."""
    children, ready = [], []
    for i in range(workers):
        ready.append(workdir / f"dbos-worker-{i}.ready")
        argv = [sys.executable, "-m", "bench.dbos_app", url, "--executor", f"bench-dbos-{i}", "--ready", str(ready[-1])]
        children.append(procs.start(f"dbos-worker-{i}", argv, {}))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(path.exists() for path in ready):
        for child in children:
            if child.popen.poll() is not None:
                raise RuntimeError(f"DBOS worker {child.name} exited with {child.popen.returncode}: "
                                   f"{child.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"DBOS workers not ready after {READY_TIMEOUT_S:.0f}s (logs in {workdir})")
        time.sleep(0.05)
    time.sleep(QUEUE_THREAD_START_S)
    return children


@contextlib.contextmanager
def workers(kind: str, workdir: Path, *, count: int) -> Iterator[Dbos]:
    """``count`` DBOS workers on a system database of ``kind`` and a client of them; all gone after the block
    (the workers are stopped before their database is dropped)."""
    with system_database(kind, workdir) as url, fleet.Processes(workdir) as procs:
        children = start_workers(procs, url, count, workdir)
        client = DBOSClient(system_database_url=url)
        engine = create_engine(normalize_url(url))
        try:
            polling = {v: client.retrieve_queue(queue_name(v)).polling_interval_sec for v in VARIANTS}
            dbos = Dbos(kind, client, engine, [c.pid for c in children], polling)
            for variant in VARIANTS:  # warm up: every queue has run a workflow before anything is measured
                dbos.result(dbos.enqueue(ONE, variant), timeout_s=30)
            yield dbos
        finally:
            client.destroy()
            engine.dispose()


def config(count: int) -> dict[str, Any]:
    """How the DBOS side runs, for the result's ``config`` (its version is under ``versions``; each DBOS result
    names the polling interval DBOS reported for its queue, ``None`` here being DBOS's default)."""
    return {"worker_processes": count, "worker_concurrency": WORKER_CONCURRENCY, "polling_interval_s": POLLING_S,
            "enqueue_threads": ENQUEUE_THREADS, "latency_queue": LATENCY_VARIANT}


def chain_latency(dbos: Dbos, runs: int) -> dict:
    """``runs`` three-step workflows, one after the other; the gap between consecutive steps of each.

    The gap is measured inside the workflow, so the queue's polling interval (which delays its start) is
    not in it: it is DBOS checkpointing step N's output and looking up step N+1's."""
    gaps = []
    for _ in range(runs):
        trace = dbos.result(dbos.enqueue(CHAIN3, LATENCY_VARIANT), timeout_s=30)
        gaps.extend(b[0] - a[1] for a, b in zip(trace, trace[1:], strict=False))
    return {"transitions_s": gaps, "runs": runs, "failed": 0}


def throughput(dbos: Dbos, count: int, variant: str) -> dict:
    """Enqueue ``count`` one-step workflows from ``ENQUEUE_THREADS`` threads as fast as they go; completed
    workflows per second, from the first enqueue to the end of the last workflow's step."""
    prefix = f"tp-{uuid.uuid4().hex[:10]}"
    start = time.time()
    with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
        list(pool.map(lambda i: dbos.enqueue(ONE, variant, workflow_id=f"{prefix}-{i}"), range(count)))
    submitted = time.time()
    dbos.wait_prefix(prefix, count, timeout_s=60 + count * 0.1)
    ended = [s.output for s in dbos.client.list_workflows(workflow_id_prefix=prefix, load_input=False)]
    seconds = max(ended) - start
    return {"workflows": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1),
            "submit_per_s": round(count / (submitted - start), 1)}


def fanout(dbos: Dbos, items: int, variant: str, *, timeout_s: float) -> dict:
    """A parent workflow that enqueues ``items`` one-step children and waits for each: wall time from the
    enqueue of the parent to its last child's result, and the rows DBOS wrote. Past ``timeout_s`` the parent
    and its children are cancelled and the result says so."""
    before = dbos.rows()
    start = time.time()
    handle = dbos.enqueue(FANOUT, variant, items, variant)
    try:
        done = dbos.result(handle, timeout_s=timeout_s, poll_s=0.05)
    except TimeoutError:
        dbos.client.cancel_workflow(handle.get_workflow_id(), cancel_children=True)
        return {"status": "skipped", "items": items, "polling_interval_s": dbos.polling_s[variant],
                "reason": f"not finished after {timeout_s:.0f}s; cancelled with its children"}
    return {"status": "ok", "items": items, "wall_s": round(done["at"] - start, 3), "results": done["results"],
            "rows_written": dbos.rows() - before, "polling_interval_s": dbos.polling_s[variant]}
