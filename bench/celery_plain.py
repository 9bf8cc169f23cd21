"""The plain-Celery side of the bench: the same no-op work as cogo's, with Celery's defaults.

Workers run ``celery -A bench.celery_plain worker --pool=solo`` on the shared queue ``bench-celery`` and
their own ``bench-celery.w<i>`` (for ``report``). Tasks keep their counts in memory, so the measured path
is Celery's alone; a ``report`` task writes them to Redis when the bench asks. Redis is the result
backend only because a chord needs one; ``noop`` and ``step`` ignore their results.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

SHARED_QUEUE = "bench-celery"
REPORT_KEY = "bench:celery:report"


def worker_queue(index: int) -> str:
    """The queue only worker ``index`` consumes."""
    return f"{SHARED_QUEUE}.w{index}"


def make_app(broker_url: str) -> Celery:
    """A Celery app with defaults, JSON, and Redis as the result backend (for the chord)."""
    app = Celery("bench-plain", broker=broker_url, backend=broker_url, set_as_current=False)
    app.conf.update(task_default_queue=SHARED_QUEUE, task_ignore_result=True, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True, result_expires=3600)
    return app


app = make_app(os.environ.get("BENCH_BROKER_URL", "memory://"))  # the bench names its own server; no default one
_seen: dict[str, float] = {"count": 0, "first": 0.0, "last": 0.0}
_clients: list[Any] = []


def _redis() -> Any:
    """One Redis client per worker process, made on first use (off the measured path)."""
    if not _clients:
        import redis

        _clients.append(redis.Redis.from_url(app.conf.broker_url))
    return _clients[0]


@app.task(name="bench.noop")
def noop() -> None:
    """Count one task and remember when it ended."""
    now = time.time()
    if not _seen["count"]:
        _seen["first"] = now
    _seen["count"] += 1
    _seen["last"] = now


@app.task(name="bench.report")
def report(reset: bool = False) -> None:
    """Write this worker's counts to Redis (and start counting again when ``reset``)."""
    _redis().hset(REPORT_KEY, str(os.getpid()), json.dumps(_seen))
    if reset:
        _seen.update(count=0, first=0.0, last=0.0)


@app.task(name="bench.step")
def step(trace: list[list[float]]) -> list[list[float]]:
    """One link of a chain: append ``[start, end]`` to the trace the previous link returned."""
    start = time.time()
    return [*trace, [start, time.time()]]


@app.task(name="bench.step_last")
def step_last(trace: list[list[float]], key: str) -> None:
    """The last link: append its ``[start, end]`` and push the whole trace to ``key``."""
    start = time.time()
    done = [*trace, [start, time.time()]]
    _redis().rpush(key, json.dumps(done))


@app.task(name="bench.item", ignore_result=False)
def item(index: int) -> int:
    """One branch of the chord: its result is stored in the backend."""
    return index


@app.task(name="bench.gather")
def gather(results: list[Any], key: str) -> None:
    """The chord's body: record when it ran and how many results it got."""
    at = time.time()
    _redis().rpush(key, json.dumps({"at": at, "results": len(results)}))
