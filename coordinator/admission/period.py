"""The ``period`` admission policy: a tenant's budget per UTC day and per UTC month, in dollars, with the cost of
each assignment computed from its metered tokens and the operator's price table (``models.<m>.usdPer1kTokens``)
rather than trusted from the worker.

Like a run's budget, a period budget is admission control with counters (``tenant_spend``): admitting an
assignment holds what it may cost at most (its ``maxTokens`` at its model's price, or its ``maxCostUsd`` for a
model the table does not price) in every period it falls in (the row remembers it in ``period_held``), and the
brain, when it settles the row, releases the hold and adds the priced usage to the period's spend (``settle``).
An assignment whose cost does not fit what the period has left waits for the next period (deferred until it
starts, and said so); one that fits once the assignments in flight settle waits for them; one whose most cost
exceeds the period's whole budget is denied (``budget.period_exceeded``): no period could admit it.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from bus import ledger
from bus.schema import agent_messages as m
from coordinator.admission import ADMIT, Ask, Setup, Verdict, defer, deny
from coordinator.admission.budgets import COST_EPSILON
from coordinator.admission.table import PeriodBudget, live
from coordinator.schema import tenant_spend as ts
from coordinator.timefmt import iso


def periods(budget: PeriodBudget, now: float) -> list[tuple[str, float, float]]:
    """``(period key, limit, when the next period starts)`` for each period ``budget`` limits at ``now``."""
    t = time.gmtime(now)
    out = []
    if budget.day is not None:
        out.append((f"day:{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", budget.day,
                    _epoch(t.tm_year, t.tm_mon, t.tm_mday) + 86400))
    if budget.month is not None:
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        out.append((f"month:{t.tm_year:04d}-{t.tm_mon:02d}", budget.month, _epoch(year, month, 1)))
    return out


def _epoch(year: int, month: int, day: int) -> float:
    return float(calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0)))


class PeriodBudgetPolicy:
    """``tenants.<t>.budgetUsd: {day, month}`` of the policy table. It locks its tenant's period rows, so it is
    asked only while the policies before it admitted (``takes``): an assignment already waiting locks nothing."""

    name = "period"
    takes = True

    def __init__(self, setup: Setup):
        self.table = live(setup.settings.policy_path)

    def check(self, ask: Ask) -> Verdict:
        """Deny an assignment whose most cost exceeds a period's whole budget; defer one that does not fit what the
        period has left (until the next period) or what is held in flight (until they settle)."""
        table = self.table.get(ask.now)
        budget = table.tenant(ask.row.tenant).budget_usd
        if not ask.first or budget is None:
            return ADMIT
        asked = _most(ask, table.usd_per_token(ask.assignment.model))
        for key, limit, next_at in periods(budget, ask.now):
            spent, held = _locked(ask.conn, ask.row.tenant, key, ask.now)
            kind = key.partition(":")[0]
            said = (f"tenant {ask.row.tenant} has spent ${spent:.4f} of its ${limit:g} {kind} budget "
                    f"(${held:.4f} held by assignments in flight); this assignment may cost up to ${asked:.4f}")
            detail = {"period": key, "limit_usd": limit, "spent_usd": round(spent, 9), "held_usd": round(held, 9),
                      "asked_usd": round(asked, 9)}
            if asked > limit + COST_EPSILON:
                return deny("budget.period_exceeded", f"this assignment may cost up to ${asked:.4f}, more than tenant "
                            f"{ask.row.tenant}'s whole ${limit:g} {kind} budget", **detail)
            if spent + asked > limit + COST_EPSILON:
                return defer("budget.period", f"{said}: it waits for the next {kind}, from {iso(next_at)}",
                             next_at, **detail)
            if spent + held + asked > limit + COST_EPSILON:
                return defer("budget.period_held", f"{said}: it waits for them to settle", None, **detail)
        return ADMIT

    def admitted(self, ask: Ask) -> None:
        """Hold the assignment's most cost in each period, and remember it on its row."""
        table = self.table.get(ask.now)
        budget = table.tenant(ask.row.tenant).budget_usd
        if not ask.first or budget is None:
            return
        price = table.usd_per_token(ask.assignment.model)
        asked = _most(ask, price)
        keys = [key for key, _limit, _next in periods(budget, ask.now)]
        for key in keys:  # locked by ``check`` already, in this order
            ask.conn.execute(update(ts).where(ts.c.tenant == ask.row.tenant, ts.c.period == key)
                             .values(held_usd=ts.c.held_usd + asked, updated_at=ask.now))
        ask.conn.execute(update(m).where(m.c.id == ask.row.id).values(
            period_held={"periods": keys, "usd": asked, "usd_per_token": price}))


def _most(ask: Ask, usd_per_token: float | None) -> float:
    budget = ask.assignment.budget
    return budget.max_tokens * usd_per_token if usd_per_token is not None else budget.max_cost_usd


def _locked(conn: Connection, tenant: str, key: str, now: float) -> tuple[float, float]:
    """The period's spend and holds, its row locked until the transaction ends (created at zero if new)."""
    q = select(ts.c.spent_usd, ts.c.held_usd).where(ts.c.tenant == tenant, ts.c.period == key)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(ts.insert().values(tenant=tenant, period=key, spent_usd=0.0, held_usd=0.0,
                                                updated_at=now))
        except IntegrityError:  # another dispatcher made it first
            pass
        row = conn.execute(q).one()
    return float(row.spent_usd), float(row.held_usd)


def settle(conn: Connection, settled: Iterable[ledger.Settled], now: float) -> None:
    """Release what settled assignments held in their periods and add their priced usage: its tokens at the price
    in force when it was admitted, or what the worker metered for a model without a price. Rows are written in
    the order admission locks them (day before month), so the two never wait on each other in a cycle."""
    for s in settled:
        held = s.period_held
        if not held:
            continue
        price = held.get("usd_per_token")
        cost = s.usage.tokens * price if price is not None else s.usage.cost_usd
        for key in sorted(str(k) for k in held["periods"]):
            conn.execute(update(ts).where(ts.c.tenant == s.tenant, ts.c.period == key)
                         .values(held_usd=ts.c.held_usd - float(held["usd"]), spent_usd=ts.c.spent_usd + cost,
                                 updated_at=now))
