"""The DBOS side of the bench: a DBOS Transact worker process, ``python -m bench.dbos_app URL --executor ID``.

It launches DBOS on the system database at ``URL`` (SQLite or PostgreSQL, DBOS's defaults otherwise),
registers the bench's queues, writes ``--ready`` and serves the queues until SIGTERM. The bench enqueues
its workflows from its own process through ``DBOSClient`` (``bench/dbos_side.py``), never from here:
enqueueing inside the executing process would compete with it for the GIL.

There are two queues, alike but for their polling interval: DBOS's default and ``SHORT_POLLING_S``. A
queue's thread looks for work once per interval, and that, not the work, bounds how soon and how many
workflows a queue starts, so every number that goes through a queue is measured at both.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig, Queue

APP_NAME = "cogo-bench-dbos"
SHORT_POLLING_S = 0.05
# None: register the queue without ``polling_interval_sec``, so DBOS's own default applies (1 s in 3.x).
POLLING_S: dict[str, float | None] = {"default_polling": None, "short_polling": SHORT_POLLING_S}
# DBOS runs each dequeued workflow on a thread of its own and its executor pool is unbounded by default,
# so a queue without a per-worker limit would start one thread per waiting workflow (10,000 on a deep
# backlog), all sharing a pool of 20 database connections. 32 bounds that, while a poll every 0.05 s can
# still start more workflows than one process finishes meanwhile (a few hundred a second here).
WORKER_CONCURRENCY = 32
CHAIN3, ONE, FANOUT = "bench_chain3", "bench_one", "bench_fanout"

_queues: dict[str, Queue] = {}


def queue_name(variant: str) -> str:
    """The queue of ``variant``: every workflow of the bench runs on it, a fan-out's parent and its children
    alike (the parent holds one of a worker's ``WORKER_CONCURRENCY`` slots while it waits)."""
    return f"bench-dbos-{variant.replace('_', '-')}"


@DBOS.step(name="bench_noop_step")
def noop_step() -> list[float]:
    """A no-op step: its own ``[start, end]``, like a plain-Celery ``bench.step``."""
    start = time.time()
    return [start, time.time()]


@DBOS.workflow(name=CHAIN3)
def chain3() -> list[list[float]]:
    """Three no-op steps one after the other; the bench reads the gaps between them from their times."""
    return [noop_step() for _ in range(3)]


@DBOS.workflow(name=ONE)
def one() -> float:
    """A one-step workflow (the throughput unit and a fan-out's child); returns when its step ended."""
    return noop_step()[1]


@DBOS.workflow(name=FANOUT)
def fanout(items: int, variant: str) -> dict[str, Any]:
    """Enqueue ``items`` children on the variant's queue, wait for every one, and say when it was done.

    Each child is awaited with the variant's polling interval (DBOS's default when the variant has none).
    The time is read in the workflow itself, not in a step: a measurement, replayed by nobody."""
    queue = _queues[queue_name(variant)]
    handles = [queue.enqueue(one) for _ in range(items)]
    poll = POLLING_S[variant]
    results = [h.get_result() if poll is None else h.get_result(polling_interval_sec=poll) for h in handles]
    return {"at": time.time(), "results": len(results)}


def register_queues() -> None:
    """One queue per variant, each polled by its own thread in every worker process. One only: an idle
    queue polled every 0.05 s costs a worker ~5% of a core, taken from whatever else runs meanwhile."""
    for variant, poll in POLLING_S.items():
        options: dict[str, Any] = {} if poll is None else {"polling_interval_sec": poll}
        name = queue_name(variant)
        _queues[name] = DBOS.register_queue(name, worker_concurrency=WORKER_CONCURRENCY, **options)


def serve(url: str, executor_id: str, ready: Path) -> None:
    """Launch DBOS on ``url``, register the queues, write ``ready``, serve until SIGTERM, then destroy."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    config: DBOSConfig = {"name": APP_NAME, "system_database_url": url, "executor_id": executor_id,
                          "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    try:
        register_queues()
        ready.write_text(executor_id)
        stop.wait()
    finally:
        DBOS.destroy()


def main(argv: list[str]) -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.dbos_app")
    parser.add_argument("url", help="the DBOS system database (sqlite:///… or postgresql://…)")
    parser.add_argument("--executor", required=True, help="this process's DBOS executor id")
    parser.add_argument("--ready", type=Path, required=True, help="written once the queues are registered")
    args = parser.parse_args(argv)
    serve(args.url, args.executor, args.ready)


if __name__ == "__main__":
    main(sys.argv[1:])
