"""Decisions (seed 001): frozen values that planning returns and the two-phase apply carries out.

What each decision does to the run's state is computed once, while planning
(``coordinator.planning.working``); phase 1 writes that difference and each decision's outside effects
(outbox rows, ledger moves, approvals and child runs) in one transaction; phase 2 sends after commit.
Some span both: ``COMPLETE_WORKFLOW`` sets the status and tells a parent (an outbox row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from bus.errors import Problem
from coordinator.state import Token


@dataclass(frozen=True)
class Decision:
    """Base of every decision; ``type`` is the seed's name."""

    type: ClassVar[str] = "DECISION"

    def describe(self) -> dict[str, Any]:
        """The decision as plain data (for replay diffs and golden files)."""
        return {"type": self.type, **_plain(asdict(self))}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class InitializeWorkflow(Decision):
    """The run starts: ``pending → running``."""

    type: ClassVar[str] = "INITIALIZE_WORKFLOW"


@dataclass(frozen=True)
class CreateToken(Decision):
    """A new token at a node."""

    token: Token
    type: ClassVar[str] = "CREATE_TOKEN"


@dataclass(frozen=True)
class UpdateTokenStatus(Decision):
    """A token moves to ``status`` (with its output or error when it finishes)."""

    token_id: str
    status: str
    output: Any = None
    error: Problem | None = None
    type: ClassVar[str] = "UPDATE_TOKEN_STATUS"


@dataclass(frozen=True)
class MarkWaiting(Decision):
    """A token waits for something outside the run (approval, timer, event, child, join)."""

    token_id: str
    wait: dict[str, Any]
    type: ClassVar[str] = "MARK_WAITING"


@dataclass(frozen=True)
class SetContext(Decision):
    """``context[key] = value`` in the root scope (``scope=None``) or a branch scope."""

    key: str
    value: Any
    scope: str | None = None
    type: ClassVar[str] = "SET_CONTEXT"


@dataclass(frozen=True)
class ApplyOutputMapping(Decision):
    """A finished token's output lands in the context (root, or its own branch scope)."""

    token_id: str
    key: str
    value: Any
    scope: str | None = None
    type: ClassVar[str] = "APPLY_OUTPUT_MAPPING"


@dataclass(frozen=True)
class DispatchToken(Decision):
    """Send a task token's assignment to the executor-dispatcher (an outbox row)."""

    token_id: str
    node_id: str
    assignment_id: str
    service: str
    role: str
    input: Any
    assignment: dict[str, Any]
    max_attempts: int = 1
    retry: dict[str, Any] = field(default_factory=dict)
    type: ClassVar[str] = "DISPATCH_TOKEN"


@dataclass(frozen=True)
class ScheduleAlarm(Decision):
    """A durable timer: a decide row due at ``fire_at`` (epoch seconds)."""

    token_id: str
    fire_at: float
    purpose: str
    alarm_id: str
    type: ClassVar[str] = "SCHEDULE_ALARM"


@dataclass(frozen=True)
class Notify(Decision):
    """Publish ``message`` on a Redis channel after commit."""

    channel: str
    message: Any
    type: ClassVar[str] = "NOTIFY"


@dataclass(frozen=True)
class CancelActiveTokens(Decision):
    """Cancel these tokens (their assignments' outcomes will be ignored)."""

    token_ids: tuple[str, ...]
    reason: str
    type: ClassVar[str] = "CANCEL_ACTIVE_TOKENS"


@dataclass(frozen=True)
class CompleteWorkflow(Decision):
    """The run completes with ``output``; a parent, if any, is told."""

    output: Any = None
    type: ClassVar[str] = "COMPLETE_WORKFLOW"


@dataclass(frozen=True)
class FailWorkflow(Decision):
    """The run fails with ``error``; a parent, if any, is told."""

    error: Problem
    type: ClassVar[str] = "FAIL_WORKFLOW"


@dataclass(frozen=True)
class CancelWorkflow(Decision):
    """The run is cancelled; children are cancelled too."""

    reason: str
    type: ClassVar[str] = "CANCEL_WORKFLOW"


@dataclass(frozen=True)
class AbandonAssignments(Decision):
    """Assignments whose token ended before they did (cancelled, timed out) are taken back: ``dead`` in the
    ledger (the dispatcher will not admit them, a worker's fenced write finds them gone), or never sent when
    they were dispatched in this same step."""

    assignment_ids: tuple[str, ...]
    reason: str
    type: ClassVar[str] = "ABANDON_ASSIGNMENTS"


@dataclass(frozen=True)
class SettleAssignment(Decision):
    """An assignment's outcome reached the brain: its usage over every attempt (read from the ledger row, not
    the event) moves from the row to its run's spend — once, whatever the number of deliveries."""

    assignment_id: str
    type: ClassVar[str] = "SETTLE_ASSIGNMENT"


# -- branch scopes and joins (seed 000, phases 4 to 6) -------------------------------------------------
@dataclass(frozen=True)
class InitBranchTable(Decision):
    """Create the isolated scope of one branch of a fan-out, seeded with ``data`` (``item``, ``index``)."""

    scope: str
    fan_id: str
    branch_index: int
    data: dict[str, Any]
    type: ClassVar[str] = "INIT_BRANCH_TABLE"


@dataclass(frozen=True)
class ApplyBranchOutput(Decision):
    """A finished token's output lands in its own branch scope, never in a sibling's or the root."""

    token_id: str
    scope: str
    key: str
    value: Any
    type: ClassVar[str] = "APPLY_BRANCH_OUTPUT"


@dataclass(frozen=True)
class OpenFanIn(Decision):
    """A fan-out starts: its join expects ``expected`` branches; ``owner_token_id`` waits for it."""

    fan_id: str
    join_node: str
    expected: int
    owner_token_id: str
    type: ClassVar[str] = "OPEN_FAN_IN"


@dataclass(frozen=True)
class RecordArrival(Decision):
    """Branch ``branch_index`` reached its join."""

    fan_id: str
    branch_index: int
    token_id: str
    type: ClassVar[str] = "RECORD_ARRIVAL"


@dataclass(frozen=True)
class MergeBranches(Decision):
    """The join merges the arrived branches' scopes, in branch order, into ``key`` of the enclosing scope."""

    fan_id: str
    key: str
    rows: tuple[Any, ...]
    branches: tuple[int, ...]
    scope: str | None = None
    type: ClassVar[str] = "MERGE_BRANCHES"


@dataclass(frozen=True)
class FireJoin(Decision):
    """The join fires — once: phase 1 flips ``fan_ins.fired`` only if it was still false."""

    fan_id: str
    join_node: str
    type: ClassVar[str] = "FIRE_JOIN"


@dataclass(frozen=True)
class CloseFanIn(Decision):
    """A join that can no longer fire (its owner was cancelled) is forgotten."""

    fan_id: str
    reason: str
    type: ClassVar[str] = "CLOSE_FAN_IN"


@dataclass(frozen=True)
class DropBranchTables(Decision):
    """Drop a fan-out's branch scopes: no scope outlives its join."""

    fan_id: str
    scopes: tuple[str, ...]
    reason: str = ""
    type: ClassVar[str] = "DROP_BRANCH_TABLES"


# -- children and people -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartSubworkflow(Decision):
    """Create the child run (and its start event) for a subworkflow token."""

    token_id: str
    child_run_id: str
    workflow: str
    version: int
    input: dict[str, Any]
    type: ClassVar[str] = "START_SUBWORKFLOW"


@dataclass(frozen=True)
class RequestApproval(Decision):
    """Write a pending ``approvals`` row for a person to decide."""

    approval_id: str
    token_id: str
    node_id: str
    prompt: str
    expires_at: float | None = None
    type: ClassVar[str] = "REQUEST_APPROVAL"


@dataclass(frozen=True)
class ResolveApproval(Decision):
    """A pending approval ends: ``approved``, ``rejected``, ``expired`` or ``cancelled``."""

    approval_id: str
    status: str
    by: str = ""
    comment: str = ""
    type: ClassVar[str] = "RESOLVE_APPROVAL"
