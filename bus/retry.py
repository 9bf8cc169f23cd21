"""Retries are data, backoff is a pure function (Temporal's RetryPolicy, with the randomness passed in)."""

from __future__ import annotations

import random
from collections.abc import Callable

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_serializer, model_validator


class RetryPolicy(BaseModel):
    """How often and how patiently to retry: ``maximum_attempts`` counts the first try."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    maximum_attempts: int = Field(default=3, ge=1, le=100)
    initial_interval_ms: int = Field(default=200, ge=0)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=10.0)
    maximum_interval_ms: int = Field(default=30_000, ge=0)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)
    dead_letter: bool | None = Field(default=None, validation_alias=AliasChoices("dead_letter", "deadLetter"))
    """When the last attempt fails: True holds the assignment as a dead letter its run waits for (an operator
    re-queues or discards it), False reports the failure at once; None: the fleet's ``COGO_DEAD_LETTER``."""

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict:
        # ``dead_letter`` is written only when chosen, so every retry policy recorded before it reads the same.
        data = handler(self)
        if data.get("dead_letter") is None:
            data.pop("dead_letter", None)
        return data

    @model_validator(mode="after")
    def _bounds(self) -> RetryPolicy:
        if self.maximum_interval_ms < self.initial_interval_ms:
            raise ValueError("maximum_interval_ms must be at least initial_interval_ms")
        return self


NO_RETRY = RetryPolicy(maximum_attempts=1)


def holds_dead_letter(policy: RetryPolicy | None, fleet_default: str) -> bool:
    """Whether an assignment whose last attempt failed is held as a dead letter: its policy's ``dead_letter``
    when set, else the fleet's default (``COGO_DEAD_LETTER``: ``hold`` or ``fail``)."""
    if policy is not None and policy.dead_letter is not None:
        return policy.dead_letter
    return fleet_default == "hold"


def compute_backoff(attempt: int, policy: RetryPolicy, rng: Callable[[], float] = random.random) -> int:
    """Milliseconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    ``initial * coefficient^(attempt-1)``, capped at the maximum, then spread by ± ``jitter``.
    """
    base = min(policy.initial_interval_ms * policy.backoff_coefficient ** max(attempt - 1, 0),
               policy.maximum_interval_ms)
    spread = base * policy.jitter * (2 * rng() - 1)
    return max(0, int(round(base + spread)))
