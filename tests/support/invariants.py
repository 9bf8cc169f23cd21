"""The ledger invariants every fault test checks after its fault: one function, shared by the whole suite.

``ledger_problems(engine)`` lists, in words, every way the ledger breaks the delivery guarantee:

* **every run ended**: no run is left ``pending``, ``running`` or ``waiting``;
* **nothing lost**: no bus row is left open (``queued``, ``dispatched``, ``running``, ``retry_wait``); every
  brain event was applied (``done``); every assignment's outcome reached its run (``settled``);
* **nothing applied twice**: an assignment's outcome was planned once (one ``decision.task.completed`` or
  ``decision.task.failed`` per assignment), an assignment succeeded at most once (one ``execute_done``), a
  join fired once (one ``operation.fan_in.fire`` per fan-in); each run's counts of active and waiting
  tokens are what its tokens say, and each fan-in's count of arrivals is how many arrival rows it has;
* **nothing overspent**: every budget in every run tree holds (``tests.support.harness.overspent``), each
  run's settled spend is exactly the usage recorded on its settled assignments (and what re-queued dead letters
  settled when they were re-queued: ``dead_letter_requeued``), and every budgeted run's
  counters (``coordinator.budgets``) equal what its subtree's rows say (the same function).

An empty list is a ledger that held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import Engine, func, select

from bus import ledger
from bus.schema import agent_messages as m
from bus.schema import bus_events, introspection_events
from coordinator.schema import fan_arrivals, fan_ins, runs
from coordinator.schema import tokens as token_table
from coordinator.state import RUN_TERMINAL, TOKEN_ACTIVE, WAITING
from tests.support.harness import overspent

ONCE_PER_ASSIGNMENT = ("decision.task.completed", "decision.task.failed")


def ledger_problems(engine: Engine, *, expect_runs: int | None = None, roots: Iterable[str] | None = None
                    ) -> list[str]:
    """Every broken invariant, in words (empty when the ledger held). ``expect_runs``: how many root runs the
    test submitted, so that a run the ledger never recorded counts as lost. ``roots``: only these run trees
    (default: the whole ledger)."""
    problems: list[str] = []
    with engine.connect() as conn:
        all_runs = conn.execute(select(runs.c.id, runs.c.status, runs.c.parent_run_id, runs.c.root_run_id,
                                       runs.c.spent_tokens, runs.c.spent_cost_usd, runs.c.active_tokens,
                                       runs.c.waiting_tokens)).all()
        token_counts = {(r.run_id, r.status): r.n for r in conn.execute(
            select(token_table.c.run_id, token_table.c.status, func.count().label("n"))
            .group_by(token_table.c.run_id, token_table.c.status))}
        rows = conn.execute(select(m.c.id, m.c.kind, m.c.status, m.c.run_id, m.c.usage_tokens, m.c.usage_cost_usd)
                            ).all()
        done_counts = Counter(r.message_id for r in conn.execute(
            select(bus_events.c.message_id).where(bus_events.c.kind == "execute_done")))
        planned = conn.execute(select(introspection_events.c.run_id, introspection_events.c.type,
                                      introspection_events.c.token_id, introspection_events.c.data)
                               .where(introspection_events.c.type.in_(ONCE_PER_ASSIGNMENT))).all()
        fires = conn.execute(select(introspection_events.c.run_id, introspection_events.c.data)
                             .where(introspection_events.c.type == "operation.fan_in.fire")).all()
        fans = arrival_counts(conn)
        settled = settled_spend(conn)

    if roots is not None:
        chosen = set(roots)
        all_runs = [r for r in all_runs if r.root_run_id in chosen]
        ids = {r.id for r in all_runs}
        rows = [r for r in rows if r.run_id in ids]
        planned = [p for p in planned if p.run_id in ids]
        fires = [f for f in fires if f.run_id in ids]
        fans = [f for f in fans if f[0] in ids]
        done_counts = Counter({k: n for k, n in done_counts.items() if k in {r.id for r in rows}})
    tree_roots = [r for r in all_runs if r.parent_run_id is None]
    if expect_runs is not None and len(tree_roots) != expect_runs:
        problems.append(f"{expect_runs} runs submitted, {len(tree_roots)} recorded")
    for r in all_runs:
        if r.status not in RUN_TERMINAL:
            problems.append(f"run {r.id} did not end: {r.status}")
    problems += token_count_problems(all_runs, token_counts)
    problems += [f"fan-in {fan_id} of run {run_id} counts {counted} arrivals; it has {rows} arrival rows"
                 for run_id, fan_id, counted, rows in fans if counted != rows]
    for row in rows:
        if row.status in ledger.OPEN:
            problems.append(f"{row.kind} {row.id} of run {row.run_id} left {row.status}")
        elif row.kind == "assignment" and row.status != ledger.SETTLED:
            problems.append(f"assignment {row.id} of run {row.run_id} ended {row.status} but never reached its run")
        elif row.kind != "assignment" and row.status != ledger.DONE:
            problems.append(f"brain event {row.kind} {row.id} of run {row.run_id} ended {row.status}, not applied")
    problems += [f"assignment {mid} succeeded {n} times" for mid, n in done_counts.items() if n > 1]
    per_assignment = Counter((p.run_id, (p.data or {}).get("assignment_id") or p.token_id) for p in planned)
    problems += [f"the outcome of {key[1]} in run {key[0]} was planned {n} times"
                 for key, n in per_assignment.items() if n > 1]
    per_fan = Counter((f.run_id, (f.data or {}).get("fan_id")) for f in fires)
    problems += [f"join of fan-in {key[1]} in run {key[0]} fired {n} times" for key, n in per_fan.items() if n > 1]
    for root in tree_roots:
        problems += overspent(engine, root.id)
    for r in all_runs:
        tokens, cost = settled.get(r.id, (0, 0.0))
        if int(tokens or 0) != r.spent_tokens or abs(float(cost or 0.0) - r.spent_cost_usd) > 1e-9:
            problems.append(f"run {r.id} spent {r.spent_tokens} tokens / ${r.spent_cost_usd:.6f}, but its settled "
                            f"assignments used {int(tokens or 0)} / ${float(cost or 0.0):.6f}")
    return problems


def settled_spend(conn) -> dict[str | None, tuple[int, float]]:
    """Run id → the usage settled on its assignments (tokens, dollars): what its settled rows recorded, plus what
    re-queued dead letters settled when they were re-queued (their rows start again from nothing; the spend is on
    their ``dead_letter_requeued`` audit rows, ``coordinator/dead_letters.py``)."""
    settled = {r.run_id: (int(r.tokens or 0), float(r.cost or 0.0)) for r in conn.execute(
        select(m.c.run_id, func.sum(m.c.usage_tokens).label("tokens"), func.sum(m.c.usage_cost_usd).label("cost"))
        .where(m.c.kind == "assignment", m.c.status == ledger.SETTLED).group_by(m.c.run_id))}
    for r in conn.execute(select(bus_events.c.run_id, bus_events.c.detail)
                          .where(bus_events.c.kind == "dead_letter_requeued")):
        tokens, cost = settled.get(r.run_id, (0, 0.0))
        spent = (r.detail or {}).get("settled") or {}
        settled[r.run_id] = (tokens + spent.get("tokens", 0), cost + spent.get("cost_usd", 0.0))
    return settled


def arrival_counts(conn) -> list[tuple[str, str, int, int]]:
    """``(run_id, fan_id, arrived_count, arrival rows)`` of every fan-in; arrival rows left behind by a fan-in
    that is gone count against an ``arrived_count`` of 0."""
    rows = {(r.run_id, r.fan_id): r.n for r in conn.execute(
        select(fan_arrivals.c.run_id, fan_arrivals.c.fan_id, func.count().label("n"))
        .group_by(fan_arrivals.c.run_id, fan_arrivals.c.fan_id))}
    counted = {(r.run_id, r.fan_id): r.arrived_count for r in conn.execute(
        select(fan_ins.c.run_id, fan_ins.c.fan_id, fan_ins.c.arrived_count))}
    return [(*key, counted.get(key, 0), rows.get(key, 0)) for key in sorted(counted.keys() | rows.keys())]


def token_count_problems(all_runs: list, token_counts: dict[tuple[str, str], int]) -> list[str]:
    """Every run whose counts of active and waiting tokens differ from its tokens."""
    problems = []
    for r in all_runs:
        active = sum(token_counts.get((r.id, s), 0) for s in TOKEN_ACTIVE)
        waiting = token_counts.get((r.id, WAITING), 0)
        if (r.active_tokens, r.waiting_tokens) != (active, waiting):
            problems.append(f"run {r.id} counts {r.active_tokens} active / {r.waiting_tokens} waiting tokens; "
                            f"its tokens say {active} / {waiting}")
    return problems


def assert_ledger_held(engine: Engine, *, expect_runs: int | None = None, roots: Iterable[str] | None = None
                       ) -> None:
    """Fail with every broken invariant listed, if any."""
    problems = ledger_problems(engine, expect_runs=expect_runs, roots=roots)
    assert not problems, f"{len(problems)} broken ledger invariants:\n" + "\n".join(problems[:50])
