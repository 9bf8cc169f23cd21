"""Admission policies of the executor-dispatcher: pure checks of an assignment against the run's limits.

Budgets are admission control: before an assignment runs, its whole budget must fit in what its run has
left (spent so far plus what assignments already admitted may still spend). A budget can therefore never
multiply across retries or fan-out branches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus.envelope import Assignment


@dataclass(frozen=True)
class Verdict:
    """The dispatcher's answer: admitted, or denied with a stable code and a reason."""

    admitted: bool
    code: str = ""
    reason: str = ""
    detail: Mapping[str, Any] | None = None


ADMIT = Verdict(True)


@dataclass(frozen=True)
class RunLedger:
    """What the run has spent and what its admitted, unfinished assignments may still spend."""

    budget: Mapping[str, Any] | None
    spent_tokens: int = 0
    spent_cost_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_cost_usd: float = 0.0


def admit(assignment: Assignment, run: RunLedger, *, allowed_models: frozenset[str] | None = None) -> Verdict:
    """Check model and budget; the first broken rule is the verdict."""
    if allowed_models is not None and assignment.model not in allowed_models:
        return Verdict(False, "policy.model_denied", f"model {assignment.model!r} is not allowed",
                       {"allowed": sorted(allowed_models)})
    if not run.budget:
        return ADMIT
    max_cost = float(run.budget.get("maxCostUsd", float("inf")))
    max_tokens = float(run.budget.get("maxTokens", float("inf")))
    need_cost = run.spent_cost_usd + run.reserved_cost_usd + assignment.budget.max_cost_usd
    need_tokens = run.spent_tokens + run.reserved_tokens + assignment.budget.max_tokens
    if need_cost > max_cost + 1e-12:
        return Verdict(False, "budget.exceeded", "the run's cost budget cannot cover this assignment",
                       {"limit": "maxCostUsd", "run_budget": max_cost, "would_need": round(need_cost, 9)})
    if need_tokens > max_tokens:
        return Verdict(False, "budget.exceeded", "the run's token budget cannot cover this assignment",
                       {"limit": "maxTokens", "run_budget": max_tokens, "would_need": need_tokens})
    return ADMIT
