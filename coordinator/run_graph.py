"""A run as a picture: its workflow definition's nodes and edges, each node with the state its tokens give it.

``node_state`` and ``edges`` are pure functions of the definition and a summary of the tokens; ``read_graph``
reads that summary in a bounded number of statements (counts grouped by node and status, the newest tokens,
the child runs, the assignments' artifacts), whatever the run's width.

A node's state, for a person: ``pending`` (not reached yet), ``running`` (a step is at work: pending or
dispatched), ``waiting`` (it waits for a person, a timer, a signal, a child run or its branches), ``done``,
``failed`` (its newest finished token failed), ``skipped`` (the run ended without reaching it, or its token
was cancelled).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, func, select

from bus.schema import agent_messages as m
from coordinator.definitions import (
    ApprovalNode,
    ForeachNode,
    GateNode,
    JoinNode,
    ParallelNode,
    Registry,
    SubworkflowNode,
    TaskNode,
    WorkflowDefinition,
)
from coordinator.schema import runs, tokens
from coordinator.state import CANCELLED, COMPLETED, DISPATCHED, FAILED, PENDING, RUN_TERMINAL, WAITING
from coordinator.store import run_view
from coordinator.timefmt import with_iso

STATES = ("pending", "running", "waiting", "done", "failed", "skipped")
"""Every state a node of the picture can be in."""
TOKENS_SHOWN = 20
"""The newest tokens listed per node (the counts cover them all)."""
TOKENS_READ = 500
"""The newest tokens read per run for those lists."""
CHILDREN_SHOWN = 50
"""Child runs listed per run (``children_count`` says how many there are)."""
ERROR_CHARS = 500
"""How much of a token's error message is shown."""


def node_state(counts: Mapping[str, int], newest_finished: str | None, *, run_ended: bool) -> str:
    """A node's state from its tokens' counts by status and the status of its newest finished token."""
    if counts.get(PENDING, 0) or counts.get(DISPATCHED, 0):
        return "running"
    if counts.get(WAITING, 0):
        return "waiting"
    if newest_finished == FAILED:
        return "failed"
    if counts.get(COMPLETED, 0):
        return "done"
    if counts.get(FAILED, 0):
        return "failed"
    if counts.get(CANCELLED, 0) or run_ended:
        return "skipped"
    return "pending"


def edges(definition: WorkflowDefinition) -> list[dict[str, Any]]:
    """Every edge of the definition: ``{from, to, kind, label}``.

    Kinds: ``next`` (label: its condition, if any), ``pass``/``fail`` (a gate), ``approve``/``reject``/``timeout``
    (an approval), ``failure`` (a task's or sub-workflow's ``on_failure``), ``branch`` (a fan-out to a branch's
    first node) and ``join`` (a fan-out to the join that merges its branches).
    """
    found: list[dict[str, Any]] = []

    def add(source: str, target: str, kind: str, label: str | None = None) -> None:
        found.append({"from": source, "to": target, "kind": kind, "label": label})

    for node_id, node in definition.nodes.items():
        for transition in node.next:
            add(node_id, transition.to, "next", transition.when)
        if isinstance(node, GateNode):
            add(node_id, node.on_pass, "pass", "pass")
            add(node_id, node.on_fail, "fail", "fail")
        elif isinstance(node, ApprovalNode):
            add(node_id, node.on_approve, "approve", "approve")
            add(node_id, node.on_reject, "reject", "reject")
            if node.on_timeout != "fail":
                add(node_id, node.on_timeout, "timeout", "timeout")
        elif isinstance(node, ParallelNode):
            for branch in node.branches:
                add(node_id, branch, "branch", None)
            add(node_id, node.join, "join", "joins at")
        elif isinstance(node, ForeachNode):
            add(node_id, node.body, "branch", "each item")
            add(node_id, node.join, "join", "joins at")
        if isinstance(node, TaskNode | SubworkflowNode) and node.on_failure:
            add(node_id, node.on_failure, "failure", "on failure")
    return found


def _evidence(definition: WorkflowDefinition, gate: GateNode, gate_id: str) -> str | None:
    """The task whose result a gate judges (its artifacts are the gate's evidence): the task whose output the
    gate's check reads (``context.<output>…``), else the task that leads into the gate."""
    check = gate.success_rate.value if gate.success_rate else gate.condition or ""
    for name in re.findall(r"context\.([A-Za-z_][A-Za-z0-9_]*)", check):
        for node_id, node in definition.nodes.items():
            if isinstance(node, TaskNode) and node.output == name:
                return node_id
    for node_id, node in definition.nodes.items():
        if isinstance(node, TaskNode) and any(t.to == gate_id for t in node.next):
            return node_id
    return None


def _node_facts(definition: WorkflowDefinition, node_id: str) -> dict[str, Any]:
    """What the definition says about one node that a picture shows."""
    node = definition.nodes[node_id]
    facts: dict[str, Any] = {"id": node_id, "kind": node.kind, "description": node.description}
    if isinstance(node, TaskNode):
        facts["route"] = f"{node.route.service}.{node.route.role}"
        facts["agent"] = node.agent.agent_id
        facts["max_attempts"] = node.retry.maximum_attempts
    elif isinstance(node, GateNode):
        facts["threshold"] = node.success_rate.threshold if node.success_rate else None
        facts["check"] = node.success_rate.value if node.success_rate else node.condition
        facts["evidence"] = _evidence(definition, node, node_id)
    elif isinstance(node, ApprovalNode):
        facts["prompt"] = node.prompt
    elif isinstance(node, SubworkflowNode):
        facts["workflow"] = node.workflow
    elif isinstance(node, JoinNode):
        facts["mode"] = node.mode if node.mode != "m_of_n" else f"{node.m} of n"
    elif isinstance(node, ParallelNode | ForeachNode):
        facts["join"] = node.join
    return facts


def picture(definition: WorkflowDefinition, *, counts: Mapping[str, Mapping[str, int]],
            newest: Mapping[str, Sequence[Mapping[str, Any]]], run_ended: bool) -> dict[str, Any]:
    """The graph of ``definition`` with each node's state: ``{start, nodes, edges}``.

    Args:
        counts: per node, its tokens' count by status.
        newest: per node, its newest tokens first (as ``_token`` shows them).
        run_ended: whether the run has ended (an unreached node is then skipped, not pending).
    """
    nodes = []
    for node_id in definition.nodes:
        listed = list(newest.get(node_id, ()))
        finished = next((t["status"] for t in listed if t["status"] in (COMPLETED, FAILED)), None)
        node = {**_node_facts(definition, node_id), "counts": dict(counts.get(node_id, {})),
                "state": node_state(counts.get(node_id, {}), finished, run_ended=run_ended),
                "tokens": listed[:TOKENS_SHOWN]}
        if node["kind"] == "gate":
            verdict = next((t["output"] for t in listed if t["status"] == COMPLETED
                            and isinstance(t.get("output"), dict) and "passed" in t["output"]), None)
            node["verdict"] = None if verdict is None else {"passed": bool(verdict["passed"]),
                                                            "value": verdict.get("value")}
        for token in node["tokens"]:
            token.pop("output", None)  # a task's output can be large: the run's context and the artifacts hold it
        nodes.append(node)
    return {"start": definition.start, "nodes": nodes, "edges": edges(definition)}


def artifact_name(result_url: str | None) -> str | None:
    """The file name behind an assignment's ``result_url`` (never its host path), or None."""
    if not result_url:
        return None
    parts = urlsplit(result_url)
    name = PurePosixPath(unquote(parts.path)).name
    return name or None


_TOKEN_COLUMNS = (tokens.c.id, tokens.c.node_id, tokens.c.status, tokens.c.attempt, tokens.c.iteration,
                  tokens.c.branch_index, tokens.c.assignment_id, tokens.c.child_run_id, tokens.c.wait, tokens.c.error,
                  tokens.c.created_at, tokens.c.updated_at)
"""What the picture shows of a token: never its output (only a gate's, read apart: ``_attach_gate_outputs``)."""


def _token(row: Mapping[str, Any]) -> dict[str, Any]:
    error = row["error"] if isinstance(row["error"], dict) else None
    return {"id": row["id"], "status": row["status"], "attempt": row["attempt"], "iteration": row["iteration"],
            "branch_index": row["branch_index"], "assignment_id": row["assignment_id"],
            "child_run_id": row["child_run_id"], "wait_kind": (row["wait"] or {}).get("kind")
            if isinstance(row["wait"], dict) else None,
            "error": None if error is None else {"code": str(error.get("code", "")),
                                                 "message": str(error.get("message", ""))[:ERROR_CHARS]},
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


def read_graph(conn: Connection, run_id: str, registry: Registry) -> dict[str, Any]:
    """The run's graph as ``GET /api/runs/{run_id}/graph`` answers it (see ``picture``), with the run's status,
    its spend against its budget, and its child runs.

    Raises:
        NotFound: no such run, or its workflow version is no longer registered.
    """
    run = run_view(conn, run_id)
    definition = registry.get(run["workflow"], run["workflow_version"])
    counts: dict[str, dict[str, int]] = {}
    for node_id, status, count in conn.execute(
            select(tokens.c.node_id, tokens.c.status, func.count()).where(tokens.c.run_id == run_id)
            .group_by(tokens.c.node_id, tokens.c.status)):
        counts.setdefault(node_id, {})[status] = count
    rows = conn.execute(select(*_TOKEN_COLUMNS).where(tokens.c.run_id == run_id)
                        .order_by(tokens.c.created_at.desc(), tokens.c.id.desc()).limit(TOKENS_READ)).mappings()
    newest: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        newest.setdefault(row["node_id"], []).append(_token(row))
    _attach_gate_outputs(conn, definition, newest)
    _attach_artifacts(conn, newest)
    graph = picture(definition, counts=counts, newest=newest, run_ended=run["status"] in RUN_TERMINAL)
    return with_iso({"run_id": run_id, "workflow": definition.name, "version": definition.version,
                     "status": run["status"], "parent_run_id": run["parent_run_id"], **graph,
                     "children": _children(conn, run_id), "children_count": _children_count(conn, run_id),
                     "spend": _spend(conn, run_id)})


def _attach_gate_outputs(conn: Connection, definition: WorkflowDefinition,
                        newest: Mapping[str, list[dict[str, Any]]]) -> None:
    """Give the listed completed tokens of the gates their output (the verdict): the only outputs a picture reads,
    so a task's output — large, and in the run's context anyway — is never read here."""
    gates = [n for n, node in definition.nodes.items() if isinstance(node, GateNode)]
    listed = {t["id"]: t for n in gates for t in newest.get(n, [])[:TOKENS_SHOWN] if t["status"] == COMPLETED}
    if listed:
        for token_id, output in conn.execute(select(tokens.c.id, tokens.c.output).where(
                tokens.c.id.in_(sorted(listed)))):
            listed[token_id]["output"] = output


def _attach_artifacts(conn: Connection, newest: Mapping[str, list[dict[str, Any]]]) -> None:
    """Name the artifact of every listed token's assignment (``artifact``: a file name, or None)."""
    shown = [t for listed in newest.values() for t in listed[:TOKENS_SHOWN]]
    ids = sorted({t["assignment_id"] for t in shown if t["assignment_id"]})
    found = dict(conn.execute(select(m.c.id, m.c.result_url).where(m.c.id.in_(ids))).all()) if ids else {}
    for token in shown:
        token["artifact"] = artifact_name(found.get(token["assignment_id"]))


def _children(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(runs.c.id, runs.c.workflow, runs.c.status, runs.c.parent_token_id, runs.c.created_at)
                        .where(runs.c.parent_run_id == run_id).order_by(runs.c.created_at, runs.c.id)
                        .limit(CHILDREN_SHOWN)).mappings()
    token_nodes = {}
    listed = [dict(r) for r in rows]
    if listed:
        token_nodes = dict(conn.execute(select(tokens.c.id, tokens.c.node_id).where(
            tokens.c.run_id == run_id, tokens.c.id.in_([r["parent_token_id"] for r in listed if r["parent_token_id"]]))
        ).all())
    return [{"run_id": r["id"], "workflow": r["workflow"], "status": r["status"],
             "node_id": token_nodes.get(r["parent_token_id"]), "created_at": r["created_at"]} for r in listed]


def _children_count(conn: Connection, run_id: str) -> int:
    return conn.execute(select(func.count()).select_from(runs).where(runs.c.parent_run_id == run_id)).scalar_one()


def _spend(conn: Connection, run_id: str) -> dict[str, Any]:
    """What the run (and, when it has a budget, its whole subtree) spent and holds, against its budget."""
    row = conn.execute(select(runs.c.budget, runs.c.spent_tokens, runs.c.spent_cost_usd, runs.c.tree_spent_tokens,
                              runs.c.tree_spent_cost_usd, runs.c.tree_held_tokens, runs.c.tree_held_cost_usd,
                              runs.c.tree_in_flight).where(runs.c.id == run_id)).mappings().one()
    budget = row["budget"] if isinstance(row["budget"], dict) else {}
    return {"budget": {"max_cost_usd": budget.get("maxCostUsd"), "max_tokens": budget.get("maxTokens")},
            "spent_tokens": row["spent_tokens"], "spent_cost_usd": row["spent_cost_usd"],
            "tree_spent_tokens": row["tree_spent_tokens"], "tree_spent_cost_usd": row["tree_spent_cost_usd"],
            "tree_held_tokens": row["tree_held_tokens"], "tree_held_cost_usd": row["tree_held_cost_usd"],
            "tree_in_flight": row["tree_in_flight"]}
