"""The message envelope and the ``__assignment`` contract, with the user's wire names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import ContractError
from bus.introspection import IntrospectionEvent
from bus.retry import RetryPolicy, holds_dead_letter
from bus.tracing import TRACE_KEY, traceparent_of

ASSIGNMENT_KEY = "__assignment"
TOKEN_KEY = "__token"
RETRY_KEY = "__retry"


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Budget(_Wire):
    """What one assignment may spend: dollars and tokens (wire names ``maxCostUsd``, ``maxTokens``)."""

    max_cost_usd: float = Field(default=1.0, ge=0, alias="maxCostUsd", allow_inf_nan=False)
    max_tokens: int = Field(default=100_000, ge=0, alias="maxTokens")


class Assignment(_Wire):
    """``payload.__assignment``: who runs the work, with which model and version, under which limits."""

    agent_id: str = Field(min_length=1, max_length=128)
    version: str = Field(default="1", min_length=1, max_length=64)
    model: str = Field(default="cogo-local", min_length=1, max_length=128)
    budget: Budget = Field(default_factory=Budget)
    ttl_ms: int = Field(default=60_000, gt=0, le=24 * 3600 * 1000)

    def wire(self) -> dict[str, Any]:
        """The assignment as it travels: JSON with the user's field names."""
        return self.model_dump(by_alias=True)


class Usage(_Wire):
    """What an attempt spent, reported by the worker and settled against the budget."""

    tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    def __add__(self, other: Usage) -> Usage:
        return Usage(tokens=self.tokens + other.tokens, cost_usd=round(self.cost_usd + other.cost_usd, 9))

    def exceeds(self, budget: Budget) -> str | None:
        """The name of the limit this usage breaks, or None."""
        if self.tokens > budget.max_tokens:
            return "maxTokens"
        if self.cost_usd > budget.max_cost_usd:
            return "maxCostUsd"
        return None


class Intent(_Wire):
    """What comes in at ``POST /api/intents``."""

    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    intent: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    payload: dict[str, Any] = Field(default_factory=dict)
    budget: Budget | None = None
    """The run's budget (``maxCostUsd``, ``maxTokens``); without one, the workflow definition's, if any."""


MAX_OUTPUT_BYTES = 1_048_576
"""Largest output one attempt may hand to the workflow (it goes into the run's context)."""


def check_json(value: Any, *, where: str, max_bytes: int = MAX_OUTPUT_BYTES) -> None:
    """Refuse what is not strict, bounded JSON: NaN and ±Infinity, non-JSON types, more than ``max_bytes``.

    Raises:
        ContractError: code ``output.invalid``, naming ``where`` and the reason.
    """
    try:
        size = len(json.dumps(value, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{where} is not strict JSON: {exc}", code="output.invalid",
                            details={"field": where}) from None
    if size > max_bytes:
        raise ContractError(f"{where} is {size} bytes of JSON; at most {max_bytes} are accepted",
                            code="output.invalid", details={"field": where, "bytes": size})


@dataclass(frozen=True, slots=True)
class TokenRef:
    """The token of the run an assignment works for; every trace of the assignment names the token."""

    token_id: str | None = None
    node_id: str | None = None
    parent_run_id: str | None = None

    def wire(self) -> dict[str, Any]:
        """The token as it travels."""
        return {"token_id": self.token_id, "node_id": self.node_id, "parent_run_id": self.parent_run_id}

    def event(self, type_: str, run_id: str, data: dict[str, Any]) -> IntrospectionEvent:
        """An introspection event of ``run_id`` about this token."""
        return IntrospectionEvent(type_, run_id, data, self.token_id, self.node_id, self.parent_run_id)


@dataclass(frozen=True, slots=True)
class AssignmentEnvelope:
    """What travels with an assignment, as its row's payload: the ``__assignment`` contract, the token it works
    for, its retry policy (data, applied wherever a retry is decided), its input, and the trace context of the
    span that last handed it on (``bus/tracing.py``). The one place these keys are written (``wire``) and read
    (``of``)."""

    assignment: Mapping[str, Any]
    token: TokenRef = TokenRef()
    retry: Mapping[str, Any] | None = None
    input: Any = None
    traceparent: str | None = None
    """A W3C ``traceparent`` (``TRACE_KEY``), only while tracing is on; one that is not well formed reads as None."""

    def wire(self) -> dict[str, Any]:
        """The payload of the assignment row."""
        out = {ASSIGNMENT_KEY: dict(self.assignment), TOKEN_KEY: self.token.wire(),
               RETRY_KEY: None if self.retry is None else dict(self.retry), "input": self.input}
        if self.traceparent is not None:
            out[TRACE_KEY] = self.traceparent
        return out

    @classmethod
    def of(cls, payload: Any) -> AssignmentEnvelope:
        """Read a row's payload; a part that is missing or not an object reads as empty (``contract`` checks the
        contract itself, so a hostile payload fails there, with the field named)."""
        raw = payload if isinstance(payload, dict) else {}
        token = raw.get(TOKEN_KEY)
        token = TokenRef(token.get("token_id"), token.get("node_id"), token.get("parent_run_id")) \
            if isinstance(token, dict) else TokenRef()
        retry = raw.get(RETRY_KEY)
        carried = raw.get(TRACE_KEY)
        return cls(raw.get(ASSIGNMENT_KEY) if isinstance(raw.get(ASSIGNMENT_KEY), dict) else {}, token,
                   retry if isinstance(retry, dict) else None, raw.get("input"),
                   None if carried is None else traceparent_of(carried))

    def contract(self) -> Assignment:
        """The checked ``__assignment``.

        Raises:
            ContractError: the contract is missing or a field is wrong; the message names the field.
        """
        if not self.assignment:
            raise ContractError(f"payload has no {ASSIGNMENT_KEY}", details={"field": ASSIGNMENT_KEY})
        return parse_model(Assignment, self.assignment, where=ASSIGNMENT_KEY)

    def retry_policy(self, max_attempts: int) -> RetryPolicy:
        """The retry policy it carries, or ``max_attempts`` attempts with the default backoff."""
        return RetryPolicy(**(self.retry or {"maximum_attempts": max_attempts}))

    def holds_dead_letter(self, fleet_default: str) -> bool:
        """Whether this assignment, once its last attempt failed, is held as a dead letter rather than reported
        failed (its retry policy's ``dead_letter``, else ``fleet_default``: ``COGO_DEAD_LETTER``). A policy that
        does not read as one falls back to the fleet's default."""
        try:
            policy = RetryPolicy(**self.retry) if self.retry else None
        except (TypeError, ValidationError):
            policy = None
        return holds_dead_letter(policy, fleet_default)


def parse_model(model: type[_Wire], raw: Any, *, where: str):
    """Validate ``raw`` into ``model`` or raise a ContractError naming the first bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in (where, *first["loc"]))
        raise ContractError(f"{loc}: {first['msg']}", details={"field": loc, "errors": _plain(exc)}) from None


def _plain(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
