"""The ``budgets`` admission policy: an assignment's whole budget must fit in every budget of its run tree.

Budgets are admission control. Every budget in the tree (the run's own, each ancestor's that has one,
the root's) is compared with its *commitment*: what was settled, plus the recorded usage of every
assignment that ended but is not settled yet, plus what the assignments still in flight hold (their budget,
which covers all their attempts together; ``coordinator.budgets`` keeps these as counters). An assignment
is admitted only if its whole budget fits on top of that, so spend can never pass a budget, whatever the
order in which outcomes are reported and settled, and retries, fan-out branches and child runs can never
multiply a budget.

An assignment that does not fit now but would fit once the in-flight assignments end having spent nothing
more is *deferred* (asked again later), not denied: a denial is for a budget that its spend alone already
leaves too small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus.envelope import Assignment
from coordinator.admission import ADMIT, Ask, Setup, Verdict

COST_EPSILON = 1e-9
"""Costs are sums of doubles: a budget is met when the sum is within this of it."""


@dataclass(frozen=True)
class BudgetSnapshot:
    """One budget of the tree and what is held against it, summed over the runs under it.

    Attributes:
        budget: ``{maxCostUsd, maxTokens}`` (either may be absent), or None for no budget.
        spent_*: settled usage.
        unsettled_*: usage recorded on assignments that ended but the brain has not settled yet.
        reserved_*: what the assignments still in flight hold (their budgets).
        run_id: the run whose budget this is.
        in_flight: how many assignments may still spend.
    """

    budget: Mapping[str, Any] | None
    spent_tokens: int = 0
    spent_cost_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_cost_usd: float = 0.0
    unsettled_tokens: int = 0
    unsettled_cost_usd: float = 0.0
    run_id: str = ""
    in_flight: int = 0

    @property
    def floor_tokens(self) -> int:
        """Tokens spent for sure: settled plus recorded."""
        return self.spent_tokens + self.unsettled_tokens

    @property
    def floor_cost_usd(self) -> float:
        """Dollars spent for sure: settled plus recorded."""
        return self.spent_cost_usd + self.unsettled_cost_usd


class BudgetsPolicy:
    """Every budget above a first admission must fit it (a re-admission after a backoff keeps what it reserved)."""

    name = "budgets"

    def __init__(self, setup: Setup):
        pass

    def check(self, ask: Ask) -> Verdict:
        """A denial (spend alone leaves too little) wins over a deferral (what is held in flight may come back)."""
        verdict = ADMIT
        for limit in ask.budgets:
            answer = fits(ask.assignment, limit)
            if not answer.admitted and not answer.deferred:
                return answer
            if answer.deferred and verdict.admitted:
                verdict = answer
        return verdict


def fits(assignment: Assignment, run: BudgetSnapshot) -> Verdict:
    """Whether ``assignment``'s whole budget fits in ``run``'s budget on top of what is committed to it."""
    if not run.budget:
        return ADMIT
    limits = (("maxCostUsd", float(run.budget.get("maxCostUsd", float("inf"))), assignment.budget.max_cost_usd,
               run.floor_cost_usd, run.reserved_cost_usd, COST_EPSILON),
              ("maxTokens", float(run.budget.get("maxTokens", float("inf"))), assignment.budget.max_tokens,
               run.floor_tokens, run.reserved_tokens, 0))
    deferred: Verdict | None = None
    for name, limit, need, floor, reserved, slack in limits:
        unit = "cost" if name == "maxCostUsd" else "token"
        detail = {"limit": name, "run_id": run.run_id, "run_budget": limit, "spent": _num(floor),
                  "reserved": _num(reserved), "asked": _num(need)}
        if floor + need > limit + slack:
            return Verdict(False, "budget.exceeded", f"the run's {unit} budget cannot cover this assignment",
                           {**detail, "would_need": _num(floor + need)})
        if deferred is None and floor + reserved + need > limit + slack:
            deferred = Verdict(False, "budget.deferred",
                               f"the run's {unit} budget is held by {run.in_flight} assignment(s) in flight; "
                               "waiting for them to settle", {**detail, "in_flight": run.in_flight},
                               deferred=True)
    return deferred or ADMIT


def _num(value: float) -> float | int:
    return round(value, 9) if isinstance(value, float) else value
