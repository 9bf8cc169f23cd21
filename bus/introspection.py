"""Introspection events (seed 000): every step the fleet takes, per run, in order, with its reason.

Types are dotted names under four categories: ``decision.*`` (what planning chose and why),
``operation.*`` (state the apply phase changed), ``dispatch.*`` (what was sent, admitted, retried),
``sql.*`` (statements a step ran). An emitter collects one step's events and writes them in that
step's transaction, so the trace can never disagree with the state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select

from bus.errors import ContractError
from bus.schema import introspection_events as ie

CATEGORIES = ("decision", "operation", "dispatch", "sql")


@dataclass(frozen=True, slots=True)
class IntrospectionEvent:
    """One event: its dotted ``type``, the run it belongs to, and what it saw."""

    type: str
    run_id: str
    data: Mapping[str, Any] = field(default_factory=dict)
    token_id: str | None = None
    node_id: str | None = None
    parent_run_id: str | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES or self.type.count(".") < 1:
            raise ContractError(f"introspection type must be <category>.<name> with category in "
                                f"{CATEGORIES}, got {self.type!r}")

    @property
    def category(self) -> str:
        """``decision``, ``operation``, ``dispatch`` or ``sql``."""
        return self.type.split(".", 1)[0]

    def row(self, now: float) -> dict[str, Any]:
        """The ``introspection_events`` row."""
        return {"run_id": self.run_id, "parent_run_id": self.parent_run_id, "category": self.category,
                "type": self.type, "token_id": self.token_id, "node_id": self.node_id,
                "data": dict(self.data), "created_at": now}


_INSERT = insert(ie)


def write(conn: Connection, events: Sequence[IntrospectionEvent], *, now: float) -> int:
    """Insert ``events`` in one statement."""
    if events:
        conn.execute(_INSERT, [e.row(now) for e in events])
    return len(events)


def read(conn: Connection, run_id: str, *, category: str | Sequence[str] | None = None,
         type_prefix: str | None = None, after_id: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
    """One run's events in the order they were written, optionally filtered (``category``: one or several)."""
    stmt = select(ie).where(ie.c.run_id == run_id, ie.c.id > after_id)
    if category:
        stmt = stmt.where(ie.c.category.in_([category] if isinstance(category, str) else list(category)))
    if type_prefix:
        stmt = stmt.where(ie.c.type.startswith(type_prefix, autoescape=True))
    rows = conn.execute(stmt.order_by(ie.c.id).limit(limit)).mappings().all()
    return [dict(r) for r in rows]
