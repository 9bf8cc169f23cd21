"""``WorkflowState``: everything planning may look at, loaded in one read at the start of each event.

Only what is still open is loaded — active tokens, open fan-ins, live branch scopes — so the cost of an
event does not grow with the run's history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator.definitions import WorkflowDefinition

# Token statuses.
PENDING = "pending"
DISPATCHED = "dispatched"
WAITING = "waiting"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TOKEN_ACTIVE = frozenset({PENDING, DISPATCHED, WAITING})

# Run statuses.
RUN_PENDING = "pending"
RUN_RUNNING = "running"
RUN_WAITING = "waiting"
RUN_COMPLETED = "completed"
RUN_FAILED = "failed"
RUN_CANCELLED = "cancelled"
RUN_TERMINAL = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})


@dataclass(frozen=True)
class Token:
    """A position of the run in its graph: at ``node_id``, in branch ``scope`` (None: the root)."""

    id: str
    node_id: str
    status: str
    scope: str | None = None
    fan_id: str | None = None
    branch_index: int | None = None
    attempt: int = 0
    iteration: int = 0
    assignment_id: str | None = None
    child_run_id: str | None = None
    wait: Mapping[str, Any] | None = None
    output: Any = None


@dataclass(frozen=True)
class FanIn:
    """The open join of one fan-out: how many have arrived, how many are expected, whether it fired."""

    fan_id: str
    join_node: str
    expected: int
    arrived: frozenset[int] = frozenset()
    """The branch indexes loaded of those that reached the join: all of them in a whole state; in a partial one
    only the event's own token's branch, if it arrived — all an arrival needs to know (is it a duplicate?), read
    without reading its siblings'. Planning that needs every arrival (firing) asks for the whole state."""
    count: int = 0
    """How many branches reached the join: exact in any state (``fan_ins.arrived_count``)."""
    fired: bool = False
    owner: str | None = None
    """The token that waits for the join (the fan-out's own token)."""


@dataclass(frozen=True)
class RunInfo:
    """The run row, minus its context."""

    id: str
    tenant: str
    intent: str
    workflow: str
    workflow_version: int
    status: str
    input: Mapping[str, Any]
    parent_run_id: str | None = None
    parent_token_id: str | None = None
    root_run_id: str | None = None
    depth: int = 0
    budget: Mapping[str, Any] | None = None
    version: int = 0


@dataclass(frozen=True)
class WorkflowState:
    """What planning gets: the run, its definition, its context and every open structure."""

    run: RunInfo
    definition: WorkflowDefinition
    context: Mapping[str, Any] = field(default_factory=dict)
    visits: Mapping[str, int] = field(default_factory=dict)
    tokens: Mapping[str, Token] = field(default_factory=dict)
    fan_ins: Mapping[str, FanIn] = field(default_factory=dict)
    scopes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    token_seq: int = 0
    catalog: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """The registered versions of every workflow the definition's subworkflow nodes name."""
    whole: bool = True
    """False when only what one event touches was loaded (its token, the owners of the open fan-ins and their
    branch scopes): planning asks for the whole state (``NeedsWholeState``) before it looks at anything else."""
    visit_scopes: frozenset[str] = frozenset()
    """Of a partial state: the branch scopes whose loop counters (``visits``) were loaded."""
    unloaded: tuple[int, int] = (0, 0)
    """Of a partial state: how many active tokens were left out, ``(working, waiting)`` — what the run's status
    (running or waiting) needs to know of them."""

    def active_tokens(self) -> list[Token]:
        """Tokens that are not finished, in creation order."""
        return sorted((t for t in self.tokens.values() if t.status in TOKEN_ACTIVE), key=lambda t: token_seq_of(t.id))


def token_seq_of(token_id: str) -> int:
    """The per-run sequence number at the end of a token id (``node.<seq>``): its creation order."""
    return int(token_id.rsplit(".", 1)[1])
