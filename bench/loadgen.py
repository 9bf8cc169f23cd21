"""A load generator in its own process: ``python -m bench.loadgen http|celery …`` prints one JSON line.

``http`` posts intents to ``POST /api/intents`` (loopback only); ``celery`` publishes plain-Celery no-op
tasks. Both stop at ``--count`` requests or ``--seconds``, whichever comes first, and report requests
per second and latency percentiles over ``--concurrency`` threads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

from bench.stats import latency_ms

Send = Callable[[], bool]


def http_sender(url: str, intent: str, tenant: str) -> Callable[[], Send]:
    """A factory of per-thread senders posting ``intent`` to the API at ``url``."""
    import httpx

    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"the load generator only targets loopback, not {url}")

    key = os.environ.get("COGO_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def make() -> Send:
        client = httpx.Client(base_url=url, timeout=30.0, headers=headers)
        body = {"tenant": tenant, "intent": intent, "payload": {}}
        return lambda: client.post("/api/intents", json=body).status_code == 202
    return make


def celery_sender(broker_url: str) -> Callable[[], Send]:
    """A factory of per-thread senders publishing ``bench.noop`` on the plain-Celery queue."""
    from bench.celery_plain import make_app

    app = make_app(broker_url)

    def make() -> Send:
        def send() -> bool:
            app.send_task("bench.noop")
            return True
        return send
    return make


def drive(make: Callable[[], Send], *, count: int, seconds: float, concurrency: int) -> dict:
    """Send until ``count`` or ``seconds``; returns rate, latency percentiles and errors."""
    tickets = itertools.count()
    deadline = time.monotonic() + seconds
    durations: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def loop() -> None:
        send = make()
        while next(tickets) < count and time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                ok = send()
            except Exception:  # a refused request is an error to count, not a crash of the generator
                ok = False
            elapsed = time.perf_counter() - t0
            with lock:
                durations.append(elapsed)
                errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": len(durations), "errors": errors[0], "seconds": round(wall, 3),
            "per_s": round(len(durations) / wall, 1) if wall else None, "concurrency": concurrency,
            **latency_ms(durations)}


def main(argv: list[str]) -> None:
    """Parse the arguments, drive the load and print the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("mode", choices=["http", "celery"])
    parser.add_argument("target", help="the API's base URL (http) or the broker URL (celery)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--intent", default="bench-one")
    parser.add_argument("--tenant", default="bench-ingress")
    args = parser.parse_args(argv)
    make = http_sender(args.target, args.intent, args.tenant) if args.mode == "http" else celery_sender(args.target)
    result = drive(make, count=args.count, seconds=args.seconds, concurrency=args.concurrency)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
