"""The brain's inputs: one frozen type per command, read from an ``orchestrator.decide`` row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bus.errors import ContractError, Problem
from bus.tracing import TRACE_KEY


@dataclass(frozen=True)
class Event:
    """Base: every event has the id of its decide row (the inbox key) and its run."""

    id: str
    run_id: str

    kind = "event"

    def payload(self) -> dict[str, Any]:
        """The row payload (everything but id and run_id)."""
        return {k: v for k, v in asdict(self).items() if k not in ("id", "run_id")}


@dataclass(frozen=True)
class Start(Event):
    """Start the run."""

    kind = "start"


@dataclass(frozen=True)
class TaskCompleted(Event):
    """A task's assignment finished with ``output``."""

    token_id: str = ""
    assignment_id: str = ""
    output: Any = None
    attempts: int = 1
    usage: dict[str, Any] = field(default_factory=dict)

    kind = "task_completed"


@dataclass(frozen=True)
class TaskFailed(Event):
    """A task's assignment failed for good (retries, if any, are spent)."""

    token_id: str = ""
    assignment_id: str = ""
    error: Problem = field(default_factory=lambda: Problem("error.unknown"))
    attempts: int = 1
    usage: dict[str, Any] = field(default_factory=dict)

    kind = "task_failed"


@dataclass(frozen=True)
class Timer(Event):
    """A durable timer fired: ``purpose`` is ``wait`` (a wait node), ``timeout`` or ``approval_timeout``."""

    token_id: str = ""
    purpose: str = "wait"

    kind = "timer"


@dataclass(frozen=True)
class Cancel(Event):
    """Cancel the run and everything under it."""

    reason: str = "cancelled"

    kind = "cancel"


@dataclass(frozen=True)
class ApprovalDecided(Event):
    """A person approved or rejected a pending approval."""

    approval_id: str = ""
    token_id: str = ""
    approved: bool = False
    by: str = ""
    comment: str = ""

    kind = "approval"


@dataclass(frozen=True)
class Signal(Event):
    """A named external event for a run."""

    name: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    kind = "signal"


@dataclass(frozen=True)
class ChildCompleted(Event):
    """A child run completed."""

    token_id: str = ""
    child_run_id: str = ""
    output: Any = None

    kind = "child_completed"


@dataclass(frozen=True)
class ChildFailed(Event):
    """A child run failed or was cancelled."""

    token_id: str = ""
    child_run_id: str = ""
    error: Problem = field(default_factory=lambda: Problem("error.unknown"))

    kind = "child_failed"


@dataclass(frozen=True)
class GaveUp(Event):
    """The brain gave up on an event of this run (``rejected_event``): it crashed on it too often. The run
    fails as any failure does, through the planner, so its parent hears of it and its work is abandoned."""

    rejected_event: str = ""
    error: Problem = field(default_factory=lambda: Problem("error.unknown"))
    assignment_id: str = ""
    """The assignment whose outcome the rejected event reported, if it was one: its spend is still settled."""

    kind = "gave_up"


EVENT_TYPES: dict[str, type[Event]] = {t.kind: t for t in (
    Start, TaskCompleted, TaskFailed, Timer, Cancel, ApprovalDecided, Signal, ChildCompleted, ChildFailed, GaveUp)}


def from_row(*, id: str, run_id: str, kind: str, payload: dict[str, Any]) -> Event:
    """Rebuild an event from its decide row.

    Raises:
        ContractError: unknown kind or fields.
    """
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise ContractError(f"unknown brain event kind {kind!r}", code="event.unknown")
    if TRACE_KEY in payload:  # the trace context the row carries (bus/tracing.py) is not part of the event
        payload = {k: v for k, v in payload.items() if k != TRACE_KEY}
    known = {f.name for f in fields(cls)}
    extra = set(payload) - known
    if extra:
        raise ContractError(f"{kind} event has unknown fields {sorted(extra)}", code="event.invalid")
    if "error" in payload:  # the one error shape, read back (rows written before it existed too)
        if not isinstance(payload["error"], Mapping):
            raise ContractError(f"{kind} event's error is not an object", code="event.invalid")
        payload = {**payload, "error": Problem.from_dict(payload["error"])}
    return cls(id=id, run_id=run_id, **payload)
