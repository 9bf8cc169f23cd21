"""Chaos: a mixed load on a supervised fleet while processes are killed -9 at random and the broker is flushed
once; every run still ends as its workflow dictates, exactly once, and the ledger holds."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import Engine, and_, func, or_, select

from bus import ledger
from bus.db import make_engine
from bus.schema import agent_messages as m
from bus.schema import bus_events, introspection_events
from coordinator.client import TERMINAL, Client
from coordinator.schema import runs
from ecosystem.child import Child
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, fleet_settings
from tests.support.invariants import assert_ledger_held
from tests.support.supervised import supervised
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

WORKERS = ["cogo-rag-embed", "cogo-kg-builder", "cogo-codegen-service", "cogo-build-test-worker"]
KILLS_AT_MOST = {"cogo-orchestrator-brain": 2, "cogo-executor-dispatcher": 2, "cogo-bus-reclaimer": 2,
                 "cogo-rag-embed": 2, "cogo-kg-builder": 2, "cogo-codegen-service": 1, "cogo-build-test-worker": 1}
"""Who may be killed, and how often. A kill of a worker costs the attempt it holds: the demo's tasks allow 2
attempts, so their workers die at most once; the others allow 3 or more. All stay far from a crash loop
(5 deaths within 60 s)."""
WAVES = 4
KILLS_PER_WAVE = 2
FLUSH_AFTER_WAVE = 1
KILLS_AFTER_LAST_WAVE = 3
TENANT = "chaos"


@dataclass(frozen=True)
class Submission:
    """One run the test submits and how its workflow says it must end."""

    intent: str
    payload: dict[str, Any]
    status: str = "completed"
    error: str | None = None
    output: Callable[[dict], bool] | None = None
    children: tuple[tuple[str, str | None], ...] = ()
    """How its child runs end: ``(status, error code)`` each."""


def docs(n: int, words: int = 5, tag: str = "d") -> list[dict[str, str]]:
    """``n`` documents of ``words`` words each: rag-embed meters one token per word."""
    return [{"id": f"{tag}{i}", "text": " ".join(f"Chaos{i}w{j}" for j in range(words))} for i in range(n)]


def mix() -> list[Submission]:
    """Built-in flows, a fan-out with an m_of_n join, subworkflows and budgeted runs: 46 runs."""
    found: list[Submission] = []
    for i in range(6):
        found.append(Submission("echo", {"n": i, "say": "chaos"}, output=lambda o, i=i: o == {"n": i, "say": "chaos"}))
    for _ in range(8):
        found.append(Submission("embed", {"documents": docs(2)}, output=lambda o: o["result"]["documents"] == 2))
    for _ in range(6):
        found.append(Submission("index", {"documents": docs(3)},
                                output=lambda o: o["documents"] == 3 and o["nodes"] >= 1))
    for _ in range(2):
        found.append(Submission("demo", {"specs": ["a function add(a, b) returning a + b"]}))
    for _ in range(6):
        found.append(Submission("chaos-fanout", {"batches": [docs(1, tag=f"b{k}-") for k in range(4)]},
                                output=lambda o: o == {"arrived": 2}))
    for _ in range(6):
        found.append(Submission("chaos-parent", {"documents": docs(2)}, output=lambda o: o["chunks"] == 2,
                                children=(("completed", None),)))
    for _ in range(3):  # the run's budget cannot cover its only task: refused at once, nothing spent
        found.append(Submission("chaos-budget-denied", {"documents": docs(1)}, status="failed",
                                error="budget.exceeded"))
    for _ in range(3):  # the first task spends 40 tokens: the second no longer fits
        found.append(Submission("chaos-budget-spent", {"documents": docs(1, words=40)}, status="failed",
                                error="budget.exceeded"))
    for _ in range(3):  # the third branch waits for budget held in flight, then runs
        found.append(Submission("chaos-budget-deferred", {"batches": [docs(1, tag=f"b{k}-") for k in range(3)]},
                                output=lambda o: o == {"arrived": 3}))
    for _ in range(3):  # the root's budget refuses the child's task
        found.append(Submission("chaos-budget-child", {"documents": docs(1)}, status="failed",
                                error="subworkflow.failed", children=(("failed", "budget.exceeded"),)))
    return found


@dataclass
class Chaos:
    """The fault schedule: seeded kills of the fleet's processes, each written down as it happens."""

    fleet: Fleet
    rng: random.Random
    engine: Engine
    started: float = field(default_factory=time.monotonic)
    kills: Counter = field(default_factory=Counter)

    def note(self, text: str) -> None:
        """Print what happened, when: pytest shows it with a failure, so a CI log explains the run."""
        print(f"t+{time.monotonic() - self.started:5.1f}s {text}", flush=True)

    def child(self, label: str) -> Child:
        return next(c for c in self.fleet.children if c.label == label)

    def back(self, label: str) -> bool:
        """Whether the supervisor has it running and ready again."""
        child = self.child(label)
        return child.poll() is None and child.is_ready()

    def kill_one(self) -> None:
        """``kill -9`` one process that may still be killed and is back since its last kill."""
        left = [name for name, most in KILLS_AT_MOST.items() if self.kills[name] < most]
        if not left:
            return
        eligible = wait_until(lambda: [n for n in left if self.back(n)], timeout=60,
                              message=f"one of {left} to be back")
        victim = self.rng.choice(sorted(eligible))
        child = self.child(victim)
        holding = self.holding(child)
        pid = child.pid
        child.signal_group(signal.SIGKILL)
        self.kills[victim] += 1
        self.note(f"kill -9 {victim} (pid {pid}; kill {self.kills[victim]} of it)"
                  + (f" holding assignment {holding}" if holding else ""))
        wait_until(lambda: child.poll() is not None, timeout=10, message=f"{victim} to die")

    def holding(self, child: Child, within_s: float = 3.0) -> str | None:
        """For a worker: wait a little for it to hold an assignment, so that the kill takes an attempt with it
        (the lease path); the assignment's id, or None when it stayed idle (it is killed all the same)."""
        routes = [and_(m.c.service == service, m.c.role == role) for service, role in child.process.routes]
        if child.process.name not in WORKERS or not routes:
            return None
        query = select(m.c.id).where(m.c.status == ledger.RUNNING, or_(*routes)).limit(1)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                found = conn.execute(query).scalar()
            if found:
                return found
            time.sleep(0.02)
        return None

    def pause(self) -> None:
        """A seeded pause between faults, so that they land while work is in flight (a schedule, not a wait
        for a condition)."""
        time.sleep(self.rng.uniform(0.2, 1.2))

    def all_back(self) -> None:
        """Wait until the supervisor has brought back every process that was killed; none is crash-looping."""
        for label in sorted(self.kills):
            wait_until(lambda label=label: self.back(label), timeout=60, message=f"{label} to be brought back")
            self.note(f"{label} is back (pid {self.child(label).pid})")
        assert not self.fleet.crash_looping, self.fleet.crash_looping


def evidence(client: Client, engine: Engine, run_id: str) -> str:
    """What a run went through, for a failure message: its row, its tree, its audit and its trace."""
    run = client.run(run_id)
    with engine.connect() as conn:
        tree = conn.execute(select(runs.c.id, runs.c.workflow, runs.c.status, runs.c.error)
                            .where(runs.c.root_run_id == run_id, runs.c.id != run_id)).all()
    audit = [(b["kind"], b["message_id"], b.get("attempt")) for b in client.bus_events(run_id)]
    trace = [e["type"] for e in client.events(run_id)]
    try:
        why = client.explain(run_id).get("summary")
    except Exception as exc:  # noqa: BLE001 - evidence is best effort: the failure is reported either way
        why = f"(explain failed: {exc})"
    return (f"run {run_id} {run['workflow']}: {run['status']} error={run.get('error')} output={run.get('output')}\n"
            f"  children: {[tuple(c) for c in tree]}\n  bus_events: {audit}\n  explain: {why}\n  trace: {trace}")


def mismatch(sub: Submission, run: dict, children: list[tuple[str, str | None]]) -> str | None:
    """How a run ended differently from what its workflow dictates, or None."""
    code = (run.get("error") or {}).get("code")
    if run["status"] != sub.status or code != sub.error:
        return f"ended {run['status']} ({code}), expected {sub.status} ({sub.error})"
    if sub.output is not None and not sub.output(run.get("output") or {}):
        return f"output {run.get('output')} is not what {sub.intent} gives"
    if sorted(children) != sorted(sub.children):
        return f"children ended {children}, expected {list(sub.children)}"
    return None


def test_chaos_kills_and_a_flush_leave_every_run_ended_once(tmp_path, owned_redis, owned_postgres):
    # A fresh seed each run explores more orders; CHAOS_SEED replays a failing schedule (timing aside).
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (rerun with CHAOS_SEED={seed})", flush=True)
    rng = random.Random(seed)
    plan = mix()
    rng.shuffle(plan)
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url, database_url=owned_postgres.url)
    engine = make_engine(owned_postgres.url)
    submitted: dict[str, Submission] = {}
    try:
        with Fleet(settings, only=[*CORE, *WORKERS], free_ports=True, env={"PYTHONUNBUFFERED": "1"},
                   console=Console(quiet=True), show_logs=False) as fleet, supervised(fleet), \
                Client(fleet.api_url, api_key=fleet.api_key) as client:
            chaos = Chaos(fleet, rng, engine)
            chaos.note(f"fleet up: {', '.join(c.label for c in fleet.children)}; logs in {settings.home / 'logs'}")
            for wave in range(WAVES):
                batch = plan[wave::WAVES]
                for sub in batch:
                    submitted[client.submit(sub.intent, tenant=TENANT, payload=sub.payload)] = sub
                chaos.note(f"wave {wave + 1}: submitted {Counter(s.intent for s in batch)}")
                for _ in range(KILLS_PER_WAVE):
                    chaos.pause()
                    chaos.kill_one()
                if wave == FLUSH_AFTER_WAVE:
                    chaos.pause()
                    owned_redis.flush()
                    chaos.note("FLUSHALL on the broker: every queued message is gone")
            for _ in range(KILLS_AFTER_LAST_WAVE):  # while the last waves still run
                chaos.pause()
                chaos.kill_one()
            chaos.all_back()

            ended: dict[str, dict] = {}

            def every_run_ended() -> bool:
                for run_id in [r for r in submitted if r not in ended]:
                    run = client.run(run_id)
                    if run["status"] in TERMINAL:
                        ended[run_id] = run
                return len(ended) == len(submitted)

            try:
                wait_until(every_run_ended, timeout=120, interval=0.5, message="every run to end")
            except AssertionError:
                stuck = [r for r in submitted if r not in ended]
                report = "\n".join(evidence(client, engine, r) for r in stuck)
                pytest.fail(f"{len(stuck)} of {len(submitted)} runs never ended (seed {seed}):\n{report}")
            chaos.note(f"every run ended: {Counter((s.intent, ended[r]['status']) for r, s in submitted.items())}")

            with engine.connect() as conn:
                audit = dict(conn.execute(select(bus_events.c.kind, func.count()).group_by(bus_events.c.kind)).all())
                deferred = conn.execute(select(func.count()).where(
                    introspection_events.c.type == "dispatch.assignment.deferred")).scalar()
                tree = conn.execute(select(runs.c.root_run_id, runs.c.status, runs.c.error)
                                    .where(runs.c.parent_run_id.is_not(None))).all()
            print(f"kills {dict(chaos.kills)}; bus_events {audit}; deferrals {deferred}", flush=True)

            children: dict[str, list] = {}
            for root, status, error in tree:
                children.setdefault(root, []).append((status, (error or {}).get("code")))
            wrong = [(r, why) for r, s in submitted.items()
                     if (why := mismatch(s, ended[r], children.get(r, []))) is not None]
            assert not wrong, (f"{len(wrong)} runs ended differently from their workflow (seed {seed}):\n" +
                               "\n".join(f"{why}\n{evidence(client, engine, r)}" for r, why in wrong))
            refused = sum(1 for s in submitted.values() if "budget.exceeded" in (s.error, *(e for _, e in s.children)))
            assert audit.get("budget_violation", 0) == refused  # each refused once, at admission
        assert_ledger_held(engine, expect_runs=len(plan))
    finally:
        engine.dispose()
