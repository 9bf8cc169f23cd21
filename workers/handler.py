"""What a worker's handler receives and returns; the runtime does the claiming, leasing and metering."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.envelope import Assignment, Usage
from bus.errors import BudgetExceeded, TTLExpired


@dataclass
class WorkContext:
    """One attempt of one assignment, as its handler sees it.

    Attributes:
        assignment_id: the assignment's id; artifacts go under ``artifacts/<assignment_id>/``.
        deadline: wall-clock time (epoch seconds) by which the attempt must end (from ``ttl_ms``).
    """

    assignment_id: str
    run_id: str | None
    token_id: str | None
    node_id: str | None
    tenant: str
    attempt: int
    assignment: Assignment
    deadline: float
    artifacts_root: Path
    llm_url: str = ""
    llm_api_key: str = ""
    usage: Usage = field(default_factory=Usage)

    @property
    def artifacts_dir(self) -> Path:
        """``<artifacts>/<assignment_id>/``, created on first use."""
        path = self.artifacts_root / self.assignment_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remaining_s(self) -> float:
        """Seconds left before the TTL expires (never negative)."""
        return max(0.0, self.deadline - time.time())

    def check_deadline(self) -> None:
        """Raise TTLExpired when the attempt has run past its TTL."""
        if time.time() >= self.deadline:
            raise TTLExpired(f"assignment {self.assignment_id} ran past its ttl_ms={self.assignment.ttl_ms}")

    def meter(self, *, tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Add what was just spent; raise BudgetExceeded the moment the budget is broken."""
        self.usage = self.usage + Usage(tokens=tokens, cost_usd=cost_usd)
        self.check_budget()

    def check_budget(self) -> None:
        """Raise BudgetExceeded when the usage so far (every attempt) breaks the assignment's budget."""
        broken = self.usage.exceeds(self.assignment.budget)
        if broken:
            raise BudgetExceeded(
                f"assignment {self.assignment_id} spent {self.usage.tokens} tokens / ${self.usage.cost_usd:.6f}, "
                f"over its budget's {broken}", details={"limit": broken, "usage": self.usage.model_dump()})


@dataclass(frozen=True)
class WorkResult:
    """What a handler returns: its output (goes into the workflow context) and where artifacts are."""

    output: dict[str, Any]
    result_url: str | None = None


Handler = Callable[[WorkContext, dict[str, Any]], WorkResult]
"""A handler: ``(ctx, input) -> WorkResult``; raise ``WorkFailed`` (retryable or not) on failure."""
