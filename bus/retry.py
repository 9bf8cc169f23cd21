"""Retries are data, backoff is a pure function (Temporal's RetryPolicy, with the randomness passed in)."""

from __future__ import annotations

import random
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    """How often and how patiently to retry: ``maximum_attempts`` counts the first try."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    maximum_attempts: int = Field(default=3, ge=1, le=100)
    initial_interval_ms: int = Field(default=200, ge=0)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=10.0)
    maximum_interval_ms: int = Field(default=30_000, ge=0)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _bounds(self) -> RetryPolicy:
        if self.maximum_interval_ms < self.initial_interval_ms:
            raise ValueError("maximum_interval_ms must be at least initial_interval_ms")
        return self


NO_RETRY = RetryPolicy(maximum_attempts=1)


def compute_backoff(attempt: int, policy: RetryPolicy, rng: Callable[[], float] = random.random) -> int:
    """Milliseconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    ``initial * coefficient^(attempt-1)``, capped at the maximum, then spread by ± ``jitter``.
    """
    base = min(policy.initial_interval_ms * policy.backoff_coefficient ** max(attempt - 1, 0),
               policy.maximum_interval_ms)
    spread = base * policy.jitter * (2 * rng() - 1)
    return max(0, int(round(base + spread)))
