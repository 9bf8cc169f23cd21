"""The plain-Celery side of each scenario, against the workers ``fleet.start_celery`` started."""

from __future__ import annotations

import json
import time
import uuid

import redis
from celery import chain, chord

from bench import celery_plain as plain


class Plain:
    """A producer for the plain-Celery workers, and a Redis client to read what they recorded."""

    def __init__(self, broker_url: str, workers: int):
        self.broker_url, self.workers = broker_url, workers
        self.app = plain.app  # the chord's and the chain's signatures are bound to it
        self.app.conf.update(broker_url=broker_url, result_backend=broker_url)
        self.redis = redis.Redis.from_url(broker_url)

    def close(self) -> None:
        """Close the producer pool and the Redis client."""
        self.app.close()
        self.redis.close()

    def reports(self, *, reset: bool = False, timeout_s: float = 30.0) -> list[dict]:
        """Ask every worker for its counts (through its own queue) and wait for every answer."""
        self.redis.delete(plain.REPORT_KEY)
        for i in range(self.workers):
            self.app.send_task("bench.report", kwargs={"reset": reset}, queue=plain.worker_queue(i))
        deadline = time.monotonic() + timeout_s
        while self.redis.hlen(plain.REPORT_KEY) < self.workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.redis.hlen(plain.REPORT_KEY)} of {self.workers} Celery workers "
                                   f"answered within {timeout_s}s")
            time.sleep(0.01)
        return [json.loads(v) for v in self.redis.hvals(plain.REPORT_KEY)]


def chain_latency(p: Plain, runs: int) -> dict:
    """``runs`` chains of three no-op tasks, one after the other; the gap between consecutive tasks."""
    key = f"bench:chain:{uuid.uuid4().hex[:8]}"
    gaps = []
    for _ in range(runs):
        chain(plain.step.s([]), plain.step.s(), plain.step_last.s(key)).apply_async()
        popped = p.redis.blpop([key], timeout=30)
        if popped is None:
            raise TimeoutError("a plain-Celery chain did not finish within 30s")
        trace = json.loads(popped[1])
        gaps.extend(b[0] - a[1] for a, b in zip(trace, trace[1:], strict=False))
    return {"transitions_s": gaps, "runs": runs, "failed": 0}


def throughput(p: Plain, count: int) -> dict:
    """Publish ``count`` no-op tasks as fast as one producer can; completed tasks per second."""
    p.reports(reset=True)
    start = time.time()
    with p.app.producer_or_acquire() as producer:
        for _ in range(count):
            p.app.send_task("bench.noop", producer=producer)
    submitted = time.time()
    deadline = time.monotonic() + 60 + count * 0.05
    while True:
        reports = p.reports()
        if sum(r["count"] for r in reports) >= count:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"plain Celery finished {sum(r['count'] for r in reports)} of {count} tasks")
        time.sleep(0.2)
    seconds = max(r["last"] for r in reports) - start
    return {"tasks": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1),
            "submit_per_s": round(count / (submitted - start), 1)}


def ingress(p: Plain, *, count: int, seconds: float, concurrency: int) -> dict:
    """Publishing no-op tasks from a load generator in a second process; then wait until they ran."""
    from bench.cogo_side import run_loadgen

    p.reports(reset=True)
    result = run_loadgen(["celery", p.broker_url], count=count, seconds=seconds, concurrency=concurrency)
    deadline = time.monotonic() + 60 + count * 0.05
    while sum(r["count"] for r in p.reports()) < result["requests"] - result["errors"]:
        if time.monotonic() > deadline:
            raise TimeoutError("plain Celery did not run the ingress tasks in time")
        time.sleep(0.2)
    return result


def fanout(p: Plain, items: int) -> dict:
    """A chord of ``items`` no-op tasks and its body: wall time and the backend keys it wrote."""
    key = f"bench:chord:{uuid.uuid4().hex[:8]}"
    before = p.redis.dbsize()
    start = time.time()
    chord(plain.item.s(i) for i in range(items))(plain.gather.s(key))
    popped = p.redis.blpop([key], timeout=120 + items * 0.2)
    if popped is None:
        return {"status": "failed", "reason": "the chord's body did not run in time"}
    done = json.loads(popped[1])
    keys = p.redis.dbsize() - before
    return {"status": "ok", "items": items, "wall_s": round(done["at"] - start, 3), "results": done["results"],
            "backend_keys_written": keys}
