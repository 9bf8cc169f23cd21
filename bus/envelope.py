"""The message envelope and the ``__assignment`` contract, with the user's wire names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import ContractError
from bus.introspection import IntrospectionEvent

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
    """``payload.__token``: the token of the run an assignment works for; every trace of it names the token."""

    token_id: str | None = None
    node_id: str | None = None
    parent_run_id: str | None = None

    @classmethod
    def of(cls, payload: Any) -> TokenRef:
        """The token an assignment's payload names (none, for a payload that names none)."""
        raw = payload.get(TOKEN_KEY) if isinstance(payload, dict) else None
        if not isinstance(raw, dict):
            return cls()
        return cls(raw.get("token_id"), raw.get("node_id"), raw.get("parent_run_id"))

    def wire(self) -> dict[str, Any]:
        """The token as it travels."""
        return {"token_id": self.token_id, "node_id": self.node_id, "parent_run_id": self.parent_run_id}

    def event(self, type_: str, run_id: str, data: dict[str, Any]) -> IntrospectionEvent:
        """An introspection event of ``run_id`` about this token."""
        return IntrospectionEvent(type_, run_id, data, self.token_id, self.node_id, self.parent_run_id)


def assignment_payload(*, assignment: dict[str, Any], token: TokenRef, retry: dict[str, Any] | None,
                       input: Any) -> dict[str, Any]:
    """The payload of an assignment row, the one place its keys are written: the ``__assignment`` contract,
    the token it works for, the retry policy (data, applied wherever the retry is decided) and its input."""
    return {ASSIGNMENT_KEY: assignment, TOKEN_KEY: token.wire(), RETRY_KEY: retry, "input": input}


def parse_assignment(payload: dict[str, Any]) -> Assignment:
    """Read and check ``payload.__assignment``.

    Raises:
        ContractError: the key is missing or a field is wrong; the message names the field.
    """
    raw = payload.get(ASSIGNMENT_KEY) if isinstance(payload, dict) else None
    if raw is None:
        raise ContractError(f"payload has no {ASSIGNMENT_KEY}", details={"field": ASSIGNMENT_KEY})
    return parse_model(Assignment, raw, where=ASSIGNMENT_KEY)


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
