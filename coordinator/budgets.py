"""Budget reservations as counters: what admission holds a run tree's budgets against, in rows it can read
at once, whatever the tree's width.

A budgeted run keeps, over its whole subtree, its settled spend (``tree_spent_*``) and what the admitted,
unsettled assignments under it hold (``tree_held_*``: their budgets, which cover all their attempts) and
how many they are (``tree_in_flight``). The executor-dispatcher *reserves* an assignment's budget on every
budgeted run above it when it admits it, and the assignment's row remembers what it holds (``held_*``);
the brain *settles* it: releases what it held and adds its recorded usage as spent. A run's budget and
parent never change, so the budgeted runs above an assignment are the same at both ends.

Admission reads the counters (one statement) and the holds that ended but are not settled yet (one
statement over a partial index: the few rows the brain has not settled, whatever the width): their
recorded usage counts instead of their budget, since a worker's last metered call may pass it.

Lock order: every transaction that changes a tree's counters locks the tree's root run row before any
other run row (PostgreSQL ``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` serialises writers already), so
admissions in one tree are serial and an admission and a settlement never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, text, update

from bus.envelope import Budget, Usage
from bus.ledger import Settled
from bus.schema import HELD_FINAL
from bus.schema import agent_messages as m
from coordinator.admission.budgets import BudgetSnapshot
from coordinator.schema import runs

_ENDED = text(HELD_FINAL.format(t="agent_messages."))


@dataclass(frozen=True)
class Chain:
    """The budgeted runs above an assignment of one run (nearest first) and its tree's root."""

    root_id: str
    budgeted: tuple[str, ...]
    parents: dict[str, str | None]
    """Run id → parent run id, for the runs walked up from the assignment's run."""


def chain(conn: Connection, run_id: str | None, *, first: Any = None) -> Chain | None:
    """The budgeted runs above (and at) ``run_id``, or None when none has a budget: then there is nothing to
    hold and nothing to lock, whatever the tree's width. Read without a lock (budgets and parents never
    change). ``first``: ``run_id``'s own ``(parent_run_id, root_run_id, budget)`` when the caller read it
    already (the dispatcher reads it with the assignment), so a root run costs no statement at all."""
    node, budgeted, parents, root = run_id, [], {}, None
    while node is not None:
        row = first if node == run_id and first is not None else conn.execute(
            select(runs.c.parent_run_id, runs.c.root_run_id, runs.c.budget).where(runs.c.id == node)).first()
        if row is None:
            return None
        if row.budget:
            budgeted.append(node)
        parents[node], root = row.parent_run_id, row.root_run_id or node
        node = row.parent_run_id
    return Chain(root, tuple(budgeted), parents) if budgeted else None


def lock_root(conn: Connection, found: Chain) -> None:
    """Lock the tree's root run row: the first run row any counter-changing transaction locks."""
    conn.execute(select(runs.c.id).where(runs.c.id == found.root_id).with_for_update())


def snapshots(conn: Connection, found: Chain) -> list[BudgetSnapshot]:
    """Each budget above the assignment and what is held against it (the root must be locked).

    The counters are read first, the ended holds second: a settlement committed in between is then counted
    as still held (its budget, at least its usage), never twice and never not at all.
    """
    counters = {r.id: r for r in conn.execute(
        select(runs.c.id, runs.c.budget, runs.c.tree_spent_tokens, runs.c.tree_spent_cost_usd,
               runs.c.tree_held_tokens, runs.c.tree_held_cost_usd, runs.c.tree_in_flight)
        .where(runs.c.id.in_(found.budgeted)))}
    ended = conn.execute(select(m.c.run_id, m.c.usage_tokens, m.c.usage_cost_usd, m.c.held_tokens,
                                m.c.held_cost_usd)
                         .select_from(m.join(runs, runs.c.id == m.c.run_id))
                         .where(runs.c.root_run_id == found.root_id, _ENDED,
                                (m.c.status != "dead") | m.c.lease_until.is_(None))).all()
    above = {run_id: _ancestry(conn, run_id, found.parents) for run_id in {e.run_id for e in ended}}
    return [_snapshot(counters[b], [e for e in ended if b in above[e.run_id]]) for b in found.budgeted]


def _snapshot(row, ended: list) -> BudgetSnapshot:
    return BudgetSnapshot(
        row.budget, spent_tokens=row.tree_spent_tokens, spent_cost_usd=row.tree_spent_cost_usd,
        unsettled_tokens=sum(e.usage_tokens for e in ended),
        unsettled_cost_usd=sum(e.usage_cost_usd for e in ended),
        reserved_tokens=max(0, row.tree_held_tokens - sum(e.held_tokens for e in ended)),
        reserved_cost_usd=max(0.0, row.tree_held_cost_usd - sum(e.held_cost_usd or 0.0 for e in ended)),
        run_id=row.id, in_flight=max(0, row.tree_in_flight - len(ended)))


def _ancestry(conn: Connection, run_id: str, parents: dict[str, str | None]) -> set[str]:
    """``run_id`` and every run above it (``parents`` is filled in as runs are read)."""
    found, node = set(), run_id
    while node is not None and node not in found:
        found.add(node)
        if node not in parents:
            parents[node] = conn.execute(select(runs.c.parent_run_id).where(runs.c.id == node)).scalar()
        node = parents[node]
    return found


def holding(budget: Budget) -> dict[str, float]:
    """The ``held_*`` values of an assignment row admitted under budgets: its whole budget."""
    return {"held_tokens": budget.max_tokens, "held_cost_usd": budget.max_cost_usd}


def reserve(conn: Connection, found: Chain, budget: Budget) -> None:
    """Hold ``budget`` on every budgeted run above an admitted assignment (its root already locked)."""
    conn.execute(update(runs).where(runs.c.id.in_(found.budgeted)).values(
        tree_held_tokens=runs.c.tree_held_tokens + budget.max_tokens,
        tree_held_cost_usd=runs.c.tree_held_cost_usd + budget.max_cost_usd,
        tree_in_flight=runs.c.tree_in_flight + 1))


def settle(conn: Connection, found: Chain, settled: Iterable[Settled]) -> None:
    """Release what settled assignments held and add their usage as spent, on every budgeted run above them."""
    settled = list(settled)
    held = [s.held for s in settled if s.held is not None]
    spent = sum((s.usage for s in settled), Usage())
    released = sum(held, Usage())
    conn.execute(update(runs).where(runs.c.id.in_(found.budgeted)).values(
        tree_spent_tokens=runs.c.tree_spent_tokens + spent.tokens,
        tree_spent_cost_usd=runs.c.tree_spent_cost_usd + spent.cost_usd,
        tree_held_tokens=runs.c.tree_held_tokens - released.tokens,
        tree_held_cost_usd=runs.c.tree_held_cost_usd - released.cost_usd,
        tree_in_flight=runs.c.tree_in_flight - len(held)))
