"""Reading a run: ``load_state`` (one read per event) and the queries the API and explain need."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from bus.errors import NotFound
from coordinator.definitions import Registry
from coordinator.schema import branch_scopes, fan_ins, runs, tokens
from coordinator.state import TOKEN_ACTIVE, FanIn, RunInfo, Token, WorkflowState
from coordinator.timefmt import with_iso


def load_state(conn: Connection, run_id: str, registry: Registry) -> WorkflowState:
    """The run's state: its row, its definition, and every open token, fan-in and branch scope.

    Raises:
        NotFound: no such run.
    """
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run {run_id}", code="run.unknown")
    active = conn.execute(select(tokens).where(tokens.c.run_id == run_id,
                                               tokens.c.status.in_(TOKEN_ACTIVE))).mappings().all()
    open_fans = conn.execute(select(fan_ins).where(fan_ins.c.run_id == run_id,
                                                   fan_ins.c.fired.is_(False))).mappings().all()
    scopes = conn.execute(select(branch_scopes.c.id, branch_scopes.c.data)
                          .where(branch_scopes.c.run_id == run_id)).all() if open_fans else []
    definition = registry.get(row["workflow"], row["workflow_version"])
    return WorkflowState(
        run=run_info(row),
        definition=definition,
        context=row["context"] or {},
        visits=row["visits"] or {},
        tokens={t["id"]: token_from_row(t) for t in active},
        fan_ins={f["fan_id"]: FanIn(f["fan_id"], f["join_node"], f["expected"], tuple(f["arrived"]), f["fired"])
                 for f in open_fans},
        scopes={s.id: s.data for s in scopes},
        token_seq=row["token_seq"],
        catalog=registry.catalog(definition),
    )


def run_info(row: Any) -> RunInfo:
    """A ``RunInfo`` from a ``runs`` row."""
    return RunInfo(id=row["id"], tenant=row["tenant"], intent=row["intent"], workflow=row["workflow"],
                   workflow_version=row["workflow_version"], status=row["status"], input=row["input"] or {},
                   parent_run_id=row["parent_run_id"], parent_token_id=row["parent_token_id"],
                   root_run_id=row["root_run_id"], depth=row["depth"], budget=row["budget"],
                   version=row["version"])


def token_from_row(row: Any) -> Token:
    """A ``Token`` from a ``tokens`` row."""
    return Token(id=row["id"], node_id=row["node_id"], status=row["status"], scope=row["scope"],
                 fan_id=row["fan_id"], branch_index=row["branch_index"], attempt=row["attempt"],
                 iteration=row["iteration"], assignment_id=row["assignment_id"],
                 child_run_id=row["child_run_id"], wait=row["wait"], output=row["output"])


def run_view(conn: Connection, run_id: str) -> dict[str, Any]:
    """The run as the API shows it (every epoch time with its ISO 8601 ``<key>_iso`` beside it).

    Raises:
        NotFound: no such run.
    """
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run {run_id}", code="run.unknown")
    keys = ("id", "tenant", "intent", "workflow", "workflow_version", "status", "parent_run_id",
            "parent_token_id", "root_run_id", "depth", "input", "context", "output", "error", "budget",
            "spent_tokens", "spent_cost_usd", "version", "created_at", "updated_at", "ended_at")
    return with_iso({k: row[k] for k in keys})


def token_rows(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    """Every token of a run, in creation order (epoch times with their ISO 8601 ``<key>_iso``)."""
    rows = conn.execute(select(tokens).where(tokens.c.run_id == run_id)
                        .order_by(tokens.c.created_at, tokens.c.id)).mappings().all()
    return [with_iso(dict(r)) for r in rows]
