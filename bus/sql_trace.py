"""``sql.*`` introspection events (seed 000: "instrument SQL with the emitter"), off by default.

With ``COGO_SQL_EVENTS=true`` the brain's step (loading the state and phase 1) and the dispatcher's admission
record each statement they run on their connection as an event of the run: ``sql.<kind>`` (``select``,
``insert``, ``update``, ``delete``) with the table, the rows it affected (or returned, where the driver says)
and its duration. ``cogo events <run> --category sql`` shows them. They cost one event row per statement, so
they are for looking into a run, not for every run of a busy fleet.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, event

from bus.introspection import IntrospectionEvent

_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+\"?(\w+)\"?", re.IGNORECASE)
KINDS = ("select", "insert", "update", "delete")


@dataclass
class SqlTrace:
    """The statements one transaction ran, in order."""

    statements: list[dict[str, Any]] = field(default_factory=list)

    def events(self, run_id: str, parent_run_id: str | None = None) -> list[IntrospectionEvent]:
        """One ``sql.<kind>`` event of ``run_id`` per statement (and forget them)."""
        found = [IntrospectionEvent(f"sql.{s['kind']}", run_id, {k: v for k, v in s.items() if k != "kind"},
                                    parent_run_id=parent_run_id) for s in self.statements]
        self.statements = []
        return found


def statement_of(sql: str) -> tuple[str, str | None]:
    """``(kind, table)`` of one SQL statement: its verb (``other`` for anything else) and the first table
    outside any subquery (a column's ``EXISTS (SELECT … FROM other)`` does not name the statement's table)."""
    words = sql.lstrip().split(None, 1)
    kind = words[0].lower() if words else "other"
    top = [f for f in _TABLE.finditer(sql) if sql.count("(", 0, f.start()) == sql.count(")", 0, f.start())]
    return (kind if kind in KINDS else "other"), (top[0].group(1) if top else None)


@contextlib.contextmanager
def traced(conn: Connection, enabled: bool) -> Iterator[SqlTrace | None]:
    """Record every statement ``conn`` runs inside the block (None, and nothing recorded, unless ``enabled``)."""
    if not enabled:
        yield None
        return
    trace, started = SqlTrace(), []

    def before(_conn, _cursor, _statement, _parameters, _context, _executemany) -> None:
        started.append(time.perf_counter())

    def after(_conn, cursor, statement, _parameters, _context, executemany) -> None:
        kind, table = statement_of(statement)
        rows = cursor.rowcount if cursor.rowcount is not None and cursor.rowcount >= 0 else None
        trace.statements.append({"kind": kind, "table": table, "rows": rows, "many": executemany,
                                 "ms": round((time.perf_counter() - started.pop()) * 1000, 3)})

    event.listen(conn, "before_cursor_execute", before)
    event.listen(conn, "after_cursor_execute", after)
    try:
        yield trace
    finally:
        event.remove(conn, "before_cursor_execute", before)
        event.remove(conn, "after_cursor_execute", after)
