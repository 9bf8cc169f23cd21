"""The cogo side of each scenario, through the real processes: the API in, the ledger read back.

Times come from the ledger: ``dispatch.assignment.started`` / ``completed`` carry the worker's clock
at claim and at completion; ``runs.ended_at`` the brain's clock when the run ended.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import Engine, func, select

from bus.schema import introspection_events as ie
from coordinator.schema import runs

TERMINAL = ("completed", "failed", "cancelled")
STARTED, COMPLETED = "dispatch.assignment.started", "dispatch.assignment.completed"
DEFERRED = "dispatch.assignment.deferred"
BRAIN, ADMITTED = "decision.task.completed", "dispatch.assignment.admitted"
HOPS = ("worker_to_brain", "brain_to_dispatcher", "dispatcher_to_worker")
# How long a fan-out cancelled past its timeout is given to end before the bench moves on.
CANCEL_WAIT_S = 60.0


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The API's credentials: ``Authorization: Bearer <key>`` when the fleet has a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Cogo:
    """A client of one running cogo fleet: submits intents over HTTP, reads the ledger directly."""

    def __init__(self, api_url: str, engine: Engine, *, api_key: str | None = None):
        self.api_url, self.engine, self.api_key = api_url, engine, api_key
        self.http = httpx.Client(base_url=api_url, timeout=30.0, headers=auth_headers(api_key))

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()

    def submit(self, intent: str, *, tenant: str = "bench", payload: dict | None = None) -> str:
        """POST one intent; returns the run id."""
        response = self.http.post("/api/intents", json={"tenant": tenant, "intent": intent, "payload": payload or {}})
        response.raise_for_status()
        return response.json()["id"]

    def wait_run(self, run_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.002) -> dict:
        """Poll the run row until it ends; returns its status, created_at and ended_at."""
        deadline = time.monotonic() + timeout_s
        stmt = select(runs.c.status, runs.c.created_at, runs.c.ended_at).where(runs.c.id == run_id)
        while True:
            with self.engine.connect() as conn:
                row = conn.execute(stmt).first()
            if row is not None and row.status in TERMINAL:
                return row._asdict()
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {row.status if row else 'missing'} after {timeout_s}s")
            time.sleep(poll_s)

    def wait_tenant(self, tenant: str, count: int, *, timeout_s: float,
                    on_poll: Callable[[int], None] | None = None, poll_s: float = 0.25) -> float:
        """Wait until ``count`` runs of ``tenant`` ended; returns the last one's ``ended_at``."""
        deadline = time.monotonic() + timeout_s
        stmt = (select(func.count(), func.max(runs.c.ended_at))
                .where(runs.c.tenant == tenant, runs.c.status.in_(TERMINAL)))
        while True:
            with self.engine.connect() as conn:
                done, last = conn.execute(stmt).one()
            if on_poll:
                on_poll(done)
            if done >= count:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {count} runs of {tenant} ended after {timeout_s}s")
            time.sleep(poll_s)

    def events(self, run_ids: list[str], types: tuple[str, ...]) -> list:
        """The runs' introspection events of ``types``, in order."""
        out = []
        with self.engine.connect() as conn:
            for i in range(0, len(run_ids), 500):
                stmt = (select(ie.c.id, ie.c.run_id, ie.c.type, ie.c.node_id, ie.c.created_at)
                        .where(ie.c.run_id.in_(run_ids[i:i + 500]), ie.c.type.in_(types)).order_by(ie.c.id))
                out.extend(conn.execute(stmt).all())
        return out


def chain_latency(cogo: Cogo, runs_: int) -> dict:
    """Run ``bench-chain3`` ``runs_`` times, one after the other; the worker-to-worker gap of each step."""
    ids, failed = [], 0
    for _ in range(runs_):
        run_id = cogo.submit("bench-chain3")
        failed += cogo.wait_run(run_id)["status"] != "completed"
        ids.append(run_id)
    events = cogo.events(ids, (STARTED, COMPLETED, BRAIN, ADMITTED))
    return {"transitions_s": transitions(events), "hops_s": hops(events), "runs": runs_, "failed": failed}


def transitions(events: list) -> list[float]:
    """``started(step N+1) − completed(step N)`` for every run's consecutive steps, in seconds."""
    by_run: dict[str, list] = {}
    for e in events:
        by_run.setdefault(e.run_id, []).append(e)
    gaps = []
    for evs in by_run.values():
        last_completed = None
        for e in evs:
            if e.type == COMPLETED:
                last_completed = e.created_at
            elif e.type == STARTED and last_completed is not None:
                gaps.append(e.created_at - last_completed)
                last_completed = None
    return gaps


def hops(events: list) -> dict[str, list[float]]:
    """Each transition split by the clocks of who wrote each event: worker → brain → dispatcher → worker."""
    out: dict[str, list[float]] = {h: [] for h in HOPS}
    chain = (COMPLETED, BRAIN, ADMITTED, STARTED)
    by_run: dict[str, list] = {}
    for e in events:
        by_run.setdefault(e.run_id, []).append(e)
    for evs in by_run.values():
        for i in range(len(evs) - 3):
            window = evs[i:i + 4]
            if tuple(e.type for e in window) == chain:
                for hop, a, b in zip(HOPS, window, window[1:], strict=False):
                    out[hop].append(b.created_at - a.created_at)
    return out


def throughput(cogo: Cogo, count: int, *, clients: int = 4, on_poll: Callable[[int], None] | None = None) -> dict:
    """Submit ``count`` one-step runs as fast as ``clients`` threads can; completed runs per second."""
    tenant = f"bench-tp-{uuid.uuid4().hex[:8]}"
    start = time.time()
    post_many(cogo.api_url, tenant, "bench-one", count, clients=clients, api_key=cogo.api_key)
    submitted = time.time()
    last = cogo.wait_tenant(tenant, count, timeout_s=60 + count * 0.1, on_poll=on_poll)
    seconds = last - start
    return {"runs": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1),
            "submit_per_s": round(count / (submitted - start), 1)}


def post_many(api_url: str, tenant: str, intent: str, count: int, *, clients: int,
              api_key: str | None = None) -> None:
    """POST ``count`` intents from ``clients`` threads, each with its own HTTP connection."""
    local = threading.local()

    def post(_: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=api_url, timeout=30.0, headers=auth_headers(api_key))
        local.http.post("/api/intents", json={"tenant": tenant, "intent": intent, "payload": {}}).raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, range(count)))


def ingress(cogo: Cogo, *, count: int, seconds: float, concurrency: int) -> dict:
    """``POST /api/intents`` from a load generator in a second process; then wait for those runs to end."""
    tenant = f"bench-in-{uuid.uuid4().hex[:8]}"
    result = run_loadgen(["http", cogo.api_url, "--tenant", tenant], count=count, seconds=seconds,
                         concurrency=concurrency, api_key=cogo.api_key)
    cogo.wait_tenant(tenant, result["requests"] - result["errors"], timeout_s=120 + count * 0.1)
    return result


def run_loadgen(args: list[str], *, count: int, seconds: float, concurrency: int,
                api_key: str | None = None) -> dict:
    """Run ``python -m bench.loadgen`` in its own process and return what it printed."""
    import json
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "bench.loadgen", *args, "--count", str(count), "--seconds", str(seconds),
            "--concurrency", str(concurrency)]
    env = {**os.environ, **({"COGO_API_KEY": api_key} if api_key else {})}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False,
                          start_new_session=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fanout_supported() -> str | None:
    """None when the planner knows ``foreach`` and ``join``; otherwise why the scenario cannot run."""
    import coordinator.planning  # noqa: F401  (registers the entry rules)
    from coordinator.planning.transitions import ENTRY_RULES

    missing = [k for k in ("foreach", "join") if k not in ENTRY_RULES]
    if missing:
        return (f"the planner has no entry rule for {', '.join(missing)} (coordinator/planning has "
                f"{', '.join(sorted(ENTRY_RULES))}); the foreach/join planner is not in the tree yet")
    return None


def fanout(cogo: Cogo, items: int, *, timeout_s: float | None = None) -> dict:
    """One ``bench-fanout`` run over ``items`` items: wall time, the ledger rows it wrote, and how many of its
    assignments the dispatcher deferred for budget (0 unless a budget, not the fleet, held it back).

    Past ``timeout_s`` (default 120 s + 0.2 s an item) the run is cancelled and reported as a timeout, with how
    many items were done: a scenario never hangs on a fan-out that does not finish.
    """
    reason = fanout_supported()
    if reason:
        return {"status": "not_run", "reason": reason}
    timeout_s = 120 + items * 0.2 if timeout_s is None else timeout_s
    start = time.time()
    run_id = cogo.submit("bench-fanout", payload={"items": list(range(items))})
    try:
        row = cogo.wait_run(run_id, timeout_s=max(0.0, start + timeout_s - time.time()), poll_s=0.05)
    except TimeoutError:
        return fanout_timeout(cogo, run_id, items=items, timeout_s=timeout_s, elapsed_s=time.time() - start)
    if row["status"] != "completed":
        return {"status": "failed", "reason": f"the fan-out run ended {row['status']}", "run_id": run_id}
    return {"status": "ok", "items": items, "wall_s": round(row["ended_at"] - start, 3),
            "deferred": count_events(cogo.engine, run_id, DEFERRED), "ledger_rows": ledger_rows(cogo.engine, run_id)}


def count_events(engine: Engine, run_id: str, type_: str) -> int:
    """How many introspection events of ``type_`` the run wrote (one indexed count): its items done, those the
    brain took in, or the assignments the dispatcher deferred for budget (held back by a budget, not the fleet)."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(ie)
                            .where(ie.c.run_id == run_id, ie.c.type == type_)).scalar_one()


def fanout_timeout(cogo: Cogo, run_id: str, *, items: int, timeout_s: float, elapsed_s: float) -> dict:
    """A fan-out past its deadline: count its items the workers finished and those the brain has taken in
    (the join waits for both), cancel it, and give the cancellation a bounded wait, so the scenarios after it
    measure a quiet fleet."""
    done, decided = count_events(cogo.engine, run_id, COMPLETED), count_events(cogo.engine, run_id, BRAIN)
    cancelled = cogo.http.post(f"/api/runs/{run_id}/cancel", json={"reason": "bench: fan-out past its timeout"})
    ended = "still running"
    with contextlib.suppress(TimeoutError):
        ended = cogo.wait_run(run_id, timeout_s=CANCEL_WAIT_S, poll_s=0.25)["status"]
    return {"status": "timeout", "items": items, "items_done": done, "items_decided": decided,
            "elapsed_s": round(elapsed_s, 1),
            "deferred": count_events(cogo.engine, run_id, DEFERRED), "timeout_s": timeout_s, "run_id": run_id,
            "cancel_http_status": cancelled.status_code, "status_after_cancel": ended,
            "reason": f"not finished after {timeout_s:g} s ({done:,} of {items:,} items done, {decided:,} taken "
                      f"in by the brain); cancelled"}


def ledger_rows(engine: Engine, run_id: str) -> dict[str, int]:
    """How many rows each ledger table holds for ``run_id`` (and their total)."""
    from bus.schema import agent_messages, bus_events
    from coordinator.schema import branch_scopes, fan_arrivals, fan_ins, tokens

    counts = {}
    with engine.connect() as conn:
        for table in (agent_messages, bus_events, ie, tokens, branch_scopes, fan_ins, fan_arrivals):
            counts[table.name] = conn.execute(select(func.count()).select_from(table)
                                              .where(table.c.run_id == run_id)).scalar_one()
    counts["runs"] = 1
    counts["total"] = sum(counts.values())
    return counts


def growth(cogo: Cogo, loops: int, *, fresh_runs: int) -> dict:
    """The cost of a step as a run's history grows: ``fresh_runs`` short runs give the cost at ~10 events of
    history (many samples, not the few first steps of one run), one run of ``loops`` steps the rest."""
    steps: list[dict] = []
    for _ in range(fresh_runs):
        steps += _loop_steps(cogo, 3)[1]
    status, long_steps, history = _loop_steps(cogo, loops)
    return {"status": status, "loops": loops, "fresh_runs": fresh_runs, "history_events": history,
            "buckets": growth_buckets(steps + long_steps)}


def _loop_steps(cogo: Cogo, loops: int) -> tuple[str, list[dict], int]:
    """Run ``bench-loop`` for ``loops`` steps; each step's history (events before it), events and time."""
    run_id = cogo.submit("bench-loop", payload={"loops": loops})
    row = cogo.wait_run(run_id, timeout_s=60 + loops * 0.5, poll_s=0.01)
    with cogo.engine.connect() as conn:
        events = conn.execute(select(ie.c.type, ie.c.created_at).where(ie.c.run_id == run_id)
                              .order_by(ie.c.id)).all()
    starts = [i for i, e in enumerate(events) if e.type == STARTED]
    steps = [{"history": a, "events": b - a, "step_s": events[b].created_at - events[a].created_at}
             for a, b in zip(starts, starts[1:], strict=False)]
    return row["status"], steps, len(events)


GROWTH_BUCKETS = ((0, 32, "10"), (32, 316, "100"), (316, 3_162, "1000"), (3_162, 10_000, "5000"),
                  (10_000, None, "10000"))


def growth_buckets(steps: list[dict]) -> list[dict]:
    """Median step time and per-event cost for steps whose history falls in each decade."""
    from bench.stats import median

    out = []
    for low, high, label in GROWTH_BUCKETS:
        inside = [s for s in steps if s["history"] >= low and (high is None or s["history"] < high)]
        if not inside:
            continue
        out.append({"history": label, "steps": len(inside),
                    "history_median": int(median([s["history"] for s in inside])),
                    "step_ms": round(median([s["step_s"] for s in inside]) * 1000, 3),
                    "per_event_ms": round(median([s["step_s"] / s["events"] for s in inside]) * 1000, 4)})
    return out
