"""One error tree for the whole fleet: every error has a stable code and says if a retry can help; and one
shape for an error as data (``Problem``), whatever carries it: a failed attempt, a denied assignment, a failed
run, an API answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_PROBLEM_KEYS = ("code", "message", "retryable", "details")


@dataclass(frozen=True)
class Problem:
    """An error as data: a stable ``code``, a ``message`` for people, whether the same work may succeed if tried
    again, and ``details`` (the node, the attempts, the child run …). Stored and sent as ``to_dict()``."""

    code: str
    message: str = ""
    retryable: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{code, message, retryable, details}``: the shape of every error in the ledger, a trace or the API."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable,
                "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, code: str = "error.unknown") -> Problem:
        """Read one back. A row written before errors had this shape (a flat ``{code, message, node …}``) is read
        too: what is not a field of its own becomes a detail."""
        data = dict(data or {})
        details = {**(data.get("details") or {}), **{k: v for k, v in data.items() if k not in _PROBLEM_KEYS}}
        return cls(str(data.get("code") or code), str(data.get("message") or ""), bool(data.get("retryable")),
                   details)


class CogoError(Exception):
    """Base of every error cogo raises on purpose.

    Attributes:
        code: a stable, documented identifier (``config.invalid``, ``contract.invalid`` …).
        retryable: whether the same call may succeed later without any change.
    """

    code = "cogo.error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details or {}

    def problem(self) -> Problem:
        """The error as data."""
        return Problem(self.code, str(self), self.retryable, dict(self.details))

    def to_dict(self) -> dict:
        """The error as the HTTP API and the CLI show it."""
        return self.problem().to_dict()


class ConfigError(CogoError):
    """A setting is missing or malformed; names the variable and what it expected."""

    code = "config.invalid"


class ContractError(CogoError):
    """A message, assignment or definition does not match its contract."""

    code = "contract.invalid"


class NotFound(CogoError):
    """A run, message or definition that was asked for does not exist."""

    code = "not_found"


class Conflict(CogoError):
    """Someone else changed the row first (a version check failed); reload and try again."""

    code = "conflict"
    retryable = True


class LedgerUnavailable(CogoError):
    """The database could not be reached or refused the statement for a passing reason."""

    code = "ledger.unavailable"
    retryable = True


class BrokerUnavailable(CogoError):
    """The broker could not be reached; the ledger row stays and the reclaimer re-sends it."""

    code = "broker.unavailable"
    retryable = True


class PolicyDenied(CogoError):
    """The executor-dispatcher refused an assignment (budget, model, version, circuit)."""

    code = "policy.denied"


class BudgetExceeded(PolicyDenied):
    """An assignment spent, or would spend, more than its budget allows."""

    code = "budget.exceeded"


class TTLExpired(CogoError):
    """An assignment ran past its ``ttl_ms``."""

    code = "ttl.expired"
    retryable = True


class WorkFailed(CogoError):
    """A worker's handler failed; ``retryable`` says whether another attempt may help."""

    code = "work.failed"

    def __init__(self, message: str, *, retryable: bool = True, code: str | None = None,
                 details: dict | None = None):
        super().__init__(message, code=code, details=details)
        self.retryable = retryable


class Unauthenticated(CogoError):
    """No credentials, or credentials that are not valid (unknown, revoked, expired, badly signed)."""

    code = "auth.required"


class Forbidden(CogoError):
    """A valid principal asked for what its scopes or tenant do not allow."""

    code = "auth.forbidden"


class RateLimited(CogoError):
    """A tenant sent more than its rate allows; ``details.retry_after_s`` says when to try again."""

    code = "rate.limited"
    retryable = True


class InvalidRequest(CogoError):
    """What a caller sent is malformed or out of bounds; the message names the field."""

    code = "request.invalid"
