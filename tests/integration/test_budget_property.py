"""Property: whatever the tree (parallel and foreach fan-outs, any/all/m-of-n joins that cancel running
siblings, retries, sub-workflows with and without their own budgets), whatever each attempt meters, and
whatever order the broker delivers in — out of order, duplicated, with attempts still running while other
outcomes are applied and with the run cancelled at a random moment — after **every** delivery no budget of the
tree is passed by its spend (settled plus recorded-but-unsettled usage), and at the end every run ended, every
assignment settled, and the settled spend equals the recorded usage (nothing applied twice, nothing lost).

The one excuse: a handler's single metering call that breaks its own assignment's budget is real spend that no
admission can stop (the worker stops the attempt right after it); that overshoot is allowed, nothing more.
"""

from __future__ import annotations

import random
import uuid
import zlib
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bus import ledger
from bus.errors import CogoError, WorkFailed
from bus.schema import agent_messages as m
from bus.schema import bus_events, metadata
from bus.settings import Settings
from coordinator import commands
from coordinator.definitions import Registry, parse_definition
from coordinator.schema import runs
from coordinator.state import RUN_TERMINAL
from tests.integration.test_patterns_property import Compiler
from tests.support.harness import Fleet, overspent, submit
from workers.handler import WorkResult

TOKEN_COST_USD = 1e-4
"""Each metered token also costs this, so that the cost budget is exercised alongside the token budget."""

task = st.builds(lambda retry: ("task", retry), st.booleans())


def _composite(blocks):
    modes = st.sampled_from(["all", "any", "m_of_n"])
    return st.one_of(
        st.builds(lambda bs, mode, m_: ("parallel", bs, mode, m_), st.lists(blocks, min_size=1, max_size=3), modes,
                  st.integers(1, 2)),
        st.builds(lambda b, mode, m_, n: ("foreach", b, mode, m_, n), blocks, modes, st.integers(1, 2),
                  st.integers(1, 3)),
        st.builds(lambda b: ("sub", b), blocks),
    )


inner = st.recursive(st.lists(task, min_size=1, max_size=2),
                     lambda blocks: st.lists(st.one_of(task, _composite(blocks)), min_size=1, max_size=2),
                     max_leaves=3)
tree = st.lists(st.one_of(_composite(inner), task), min_size=1, max_size=2).filter(
    lambda steps: any(step[0] != "task" for step in steps))
"""A run tree: at least one fan-out or sub-workflow at the top, so that siblings compete for budgets."""


def with_budgets(definitions: list[dict[str, Any]], root: str, rng: random.Random) -> None:
    """Give the root a budget, some sub-workflows their own, and every task an assignment budget."""
    for definition in definitions:
        if definition["name"] == root or rng.random() < 0.5:
            tokens = rng.choice([500, 800, 1200, 2000])
            definition["budget"] = {"maxTokens": tokens, "maxCostUsd": round(tokens * TOKEN_COST_USD, 6)}
        for node in definition["nodes"].values():
            if node["kind"] == "task":
                tokens = rng.choice([200, 300, 500])
                node["agent"]["budget"] = {"maxTokens": tokens, "maxCostUsd": round(tokens * TOKEN_COST_USD, 6)}


def overshoot(row: dict) -> tuple[int, float]:
    """What one assignment spent beyond its own budget (a metering call that broke it)."""
    budget = row["payload"]["__assignment"]["budget"]
    return (max(0, row["usage_tokens"] - budget["maxTokens"]),
            max(0.0, row["usage_cost_usd"] - budget["maxCostUsd"]))


class Chaos:
    """Drives the fleet like a bad broker and checks every budget after every delivery."""

    def __init__(self, fleet: Fleet, root: str, rng: random.Random, *, cancel_at: int | None):
        self.fleet, self.root, self.rng, self.cancel_at = fleet, root, rng, cancel_at
        self.steps, self.depth = 0, 0

    def check(self) -> None:
        problems = overspent(self.fleet.engine, self.root, allowance=overshoot)
        assert problems == [], problems

    def step(self) -> bool:
        """Deliver one pending message (usually the next due, sometimes any), maybe twice; False when idle."""
        heap = self.fleet.publisher._heap
        if not heap:
            return False
        if self.rng.random() < 0.3:  # out of order: anything pending, even what is not due yet
            entry = heap.pop(self.rng.randrange(len(heap)))
            import heapq
            heapq.heapify(heap)
            due, delivery = entry[0], entry[2]
        else:
            due, delivery = self.fleet.publisher.pop()
        self.fleet.clock.now = max(self.fleet.clock.now, due)
        outcome = self.fleet.deliver(delivery)
        if self.rng.random() < 0.1:
            self.fleet.publisher.send([delivery])
        self.steps += 1
        if outcome not in ("duplicate", "early"):  # those write nothing: the ledger is as it was checked
            self.check()
        if self.steps == self.cancel_at:
            self.cancel()
        if self.steps % 25 == 0:
            self.fleet.clock.now += 3
            self.fleet.reclaimer.sweep()
        return True

    def cancel(self) -> None:
        try:
            with self.fleet.engine.begin() as conn:
                delivery = commands.cancel(conn, self.root, reason="chaos", now=self.fleet.clock(), shards=1)
        except CogoError:  # already ended
            return
        self.fleet.publisher.send([delivery])

    def meanwhile(self) -> None:
        """Called inside a handler: other messages are delivered while this attempt is still running."""
        if self.depth or self.rng.random() >= 0.35:
            return
        self.depth += 1
        try:
            for _ in range(self.rng.randint(1, 6)):
                if not self.step():
                    break
        finally:
            self.depth -= 1

    def run(self, limit: int = 3000) -> None:
        idle_sweeps = 0
        while self.steps < limit:
            if self.step():
                idle_sweeps = 0
                continue
            self.fleet.clock.now += self.fleet.settings.lease_s + 1  # let every abandoned lease run out
            self.fleet.reclaimer.sweep()
            self.check()
            idle_sweeps += 1
            if idle_sweeps >= 2:
                return
        raise AssertionError(f"no quiescence after {limit} deliveries")


def handler(seed: int, chaos_of):
    def work(ctx, payload):
        roll = random.Random(zlib.crc32(f"{seed}/{ctx.token_id}/{ctx.attempt}".encode()))
        budget = ctx.assignment.budget.max_tokens
        chaos_of().meanwhile()
        for _ in range(roll.randint(0, 3)):
            tokens = int(budget * roll.choice([0.05, 0.1, 0.2, 0.3, 0.3, 0.45]))
            ctx.meter(tokens=tokens, cost_usd=tokens * TOKEN_COST_USD)  # may break the budget: BudgetExceeded
        fate = roll.random()
        if fate < 0.03:
            raise WorkFailed("permanent", retryable=False)
        if fate < 0.2:
            raise WorkFailed("transient", retryable=True)
        return WorkResult(output={"pass": fate > 0.5})
    return work


def forget_earlier_examples(engine) -> None:
    """Empty this test's own ledger, so that each example starts alone (the reclaimer scans every row, and an
    example must be replayable exactly)."""
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(body=tree, seed=st.integers(0, 2**16), cancel_at=st.none() | st.integers(1, 40),
       chaos=st.randoms(use_true_random=False), batched=st.booleans())
def test_no_budget_in_the_tree_is_ever_passed(engine, body, seed, cancel_at, chaos, batched):
    forget_earlier_examples(engine)
    name = f"b{seed}-{zlib.crc32(repr(body).encode()) % 10**6}"
    compiler = Compiler(name)
    compiler.workflow(name, body)
    with_budgets(compiler.definitions, name, random.Random(seed))
    registry = Registry([parse_definition(d) for d in compiler.definitions])
    box: list[Chaos] = []
    fleet = Fleet(engine, {("t", "work"): handler(seed, lambda: box[0])}, registry=registry, fail_fast=True,
                  batched=batched, brain_batch_after_s=0.0 if batched else None,
                  settings=Settings(broker_url="memory://", lease_s=4.0).checked())
    root = submit(fleet, name, {"flag": True, "items": compiler.items},
                  run_id=str(uuid.uuid5(uuid.NAMESPACE_URL, name)))
    box.append(Chaos(fleet, root, chaos, cancel_at=cancel_at))
    box[0].run()

    with engine.connect() as conn:
        family = dict(conn.execute(select(runs.c.id, runs.c.status).where(runs.c.root_run_id == root)).all())
        assert all(s in RUN_TERMINAL for s in family.values()), family
        rows = conn.execute(select(m.c.id, m.c.status, m.c.usage_tokens, m.c.usage_cost_usd)
                            .where(m.c.run_id.in_(list(family)), m.c.kind == "assignment")).all()
        spent = conn.execute(select(func.sum(runs.c.spent_tokens), func.sum(runs.c.spent_cost_usd))
                             .where(runs.c.root_run_id == root)).one()
    assert [r.id for r in rows if r.status != ledger.SETTLED] == []
    assert spent[0] == sum(r.usage_tokens for r in rows)  # settled exactly once each
    assert abs(spent[1] - sum(r.usage_cost_usd for r in rows)) < 1e-9
    event(f"root {family[root]}" + (", admissions batched" if batched else ""))
    event(f"steps<{100 * (box[0].steps // 100 + 1)}")
    event(f"{len(rows)} assignments" if len(rows) < 4 else "4+ assignments")
    with engine.connect() as conn:
        kinds = {k for (k,) in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id.in_(list(family))))}
    for kind in ("execute_deferred", "budget_violation", "execute_cancelled", "lease_expired"):
        if kind in kinds:
            event(kind)
