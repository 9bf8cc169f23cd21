"""Reading a run: ``load_state`` (one read per event) and the queries the API and explain need."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, exists, select

from bus.errors import NotFound
from coordinator.definitions import Registry
from coordinator.planning.working import visit_key
from coordinator.schema import branch_scopes, fan_arrivals, fan_ins, run_visits, runs, tokens
from coordinator.state import TOKEN_ACTIVE, WAITING, FanIn, RunInfo, Token, WorkflowState
from coordinator.timefmt import with_iso


def load_state(conn: Connection, run_id: str, registry: Registry, *,
               focus: str | None = None) -> WorkflowState:
    """The run's state: its row, its definition, its open fan-ins with their arrivals, and every active token and
    branch scope — or, given ``focus`` (the token an event is about), only what that event touches: the token,
    whether its own branch already arrived at its join, the owners of the open fan-ins and their branch scopes, so
    an arrival at a 1,000-way join reads a few rows, not 3,000. Planning asks for the rest when it needs it
    (``NeedsWholeState``).

    Raises:
        NotFound: no such run.
    """
    row = conn.execute(select(runs, _BRANCH_VISITS).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run {run_id}", code="run.unknown")
    open_fans = [] if not row["open_fans"] else conn.execute(
        select(fan_ins).where(fan_ins.c.run_id == run_id, fan_ins.c.fired.is_(False))).mappings().all()
    owners = [f["owner_token_id"] for f in open_fans]
    whole = focus is None or None in owners  # a fan-in written before owners were recorded: load everything
    if whole:
        loaded = conn.execute(select(*_TOKEN_COLUMNS).where(tokens.c.run_id == run_id,
                                                           tokens.c.status.in_(TOKEN_ACTIVE))).mappings().all()
    else:  # by primary key, whatever the run's width; a finished one is not loaded
        columns = (*_TOKEN_COLUMNS, _ARRIVED) if open_fans else _TOKEN_COLUMNS
        loaded = [t for t in conn.execute(select(*columns).where(tokens.c.run_id == run_id,
                                                                 tokens.c.id.in_([focus, *owners])))
                  .mappings().all() if t["status"] in TOKEN_ACTIVE]
    arrived = _arrivals(conn, run_id, open_fans, loaded, focus=None if whole else focus)
    scopes = []
    if open_fans:
        stmt = select(branch_scopes.c.id, branch_scopes.c.data).where(branch_scopes.c.run_id == run_id)
        if not whole:
            stmt = stmt.where(branch_scopes.c.id.in_({t["scope"] for t in loaded if t["scope"]}))
        scopes = conn.execute(stmt).all()
    definition = registry.get(row["workflow"], row["workflow_version"])
    waiting = sum(1 for t in loaded if t["status"] == WAITING)
    if not whole and not open_fans and not row["branch_visits"] and row["active_tokens"] == len(loaded):
        whole = True  # no token, scope or loop counter was left out: this is the whole state
    visit_scopes = frozenset(t["scope"] for t in loaded if t["scope"])
    visits = dict(row["visits"] or {})
    if row["branch_visits"] and (whole or visit_scopes):
        stmt = select(run_visits.c.scope, run_visits.c.node_id, run_visits.c.count).where(run_visits.c.run_id == run_id)
        if not whole:
            stmt = stmt.where(run_visits.c.scope.in_(visit_scopes))
        visits |= {visit_key(r.scope, r.node_id): r.count for r in conn.execute(stmt)}
    return WorkflowState(
        run=run_info(row),
        definition=definition,
        context=row["context"] or {},
        visits=visits,
        tokens={t["id"]: token_from_row(t) for t in loaded},
        fan_ins={f["fan_id"]: FanIn(f["fan_id"], f["join_node"], f["expected"], arrived[f["fan_id"]],
                                    f["arrived_count"], f["fired"], f["owner_token_id"]) for f in open_fans},
        scopes={s.id: s.data for s in scopes},
        token_seq=row["token_seq"],
        catalog=registry.catalog(definition),
        whole=whole,
        visit_scopes=frozenset() if whole else visit_scopes,
        unloaded=(0, 0) if whole else (row["active_tokens"] - row["waiting_tokens"] - (len(loaded) - waiting),
                                       row["waiting_tokens"] - waiting),
    )


def _arrivals(conn: Connection, run_id: str, open_fans: list[Any], loaded: list[Any], *,
              focus: str | None) -> dict[str, frozenset[int]]:
    """The branch indexes a state holds of each open fan-in's arrivals: every one in a whole state (``focus``
    None: one statement for all the open fan-ins), else only the focus token's own branch, if it arrived (read
    with the token, ``_ARRIVED``: no statement of its own)."""
    arrived: dict[str, set[int]] = {f["fan_id"]: set() for f in open_fans}
    if focus is None and arrived:
        rows = conn.execute(select(fan_arrivals.c.fan_id, fan_arrivals.c.branch_index)
                            .where(fan_arrivals.c.run_id == run_id, fan_arrivals.c.fan_id.in_(arrived))).mappings()
    else:
        rows = [t for t in loaded if t["id"] == focus and t.get("arrived_as") is not None]
    for r in rows:
        if r["fan_id"] in arrived:
            arrived[r["fan_id"]].add(r["branch_index"])
    return {fan_id: frozenset(indexes) for fan_id, indexes in arrived.items()}


_BRANCH_VISITS = exists().where(run_visits.c.run_id == runs.c.id).label("branch_visits")
"""Read with the run row: whether any branch has loop counters (most runs have none: no statement for them)."""
_TOKEN_COLUMNS = (tokens.c.id, tokens.c.node_id, tokens.c.status, tokens.c.scope, tokens.c.fan_id,
                  tokens.c.branch_index, tokens.c.attempt, tokens.c.iteration, tokens.c.assignment_id,
                  tokens.c.child_run_id, tokens.c.wait, tokens.c.output)
"""What planning reads of a token (not its error, nor its times)."""
_ARRIVED = (select(fan_arrivals.c.token_id).where(fan_arrivals.c.run_id == tokens.c.run_id,
                                                  fan_arrivals.c.fan_id == tokens.c.fan_id,
                                                  fan_arrivals.c.branch_index == tokens.c.branch_index)
            .scalar_subquery().label("arrived_as"))
"""Read with a token of a partial state: the token that arrived at its join for its branch, if one did (a
primary-key probe in the same statement, so an arrival learns whether it is a duplicate without reading its
siblings'). A scalar subquery, not ``EXISTS``: PostgreSQL may run an ``EXISTS`` as one hashed scan of the whole
table instead of a probe per token (it did, on a generic plan), and a scalar subquery is always a probe."""


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
