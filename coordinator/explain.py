"""``explain(run)``: what a run is waiting for, and why — in one call.

Every active token waits for exactly one thing: an assignment (queued, running, or in a retry backoff
until a given time), a join (k of n branches arrived, these ones missing), an approval (since when,
until when), a timer (when it fires), an external event, or a child run. Each answer carries the last
decision the brain made about that token, with its reason.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from bus import ledger
from bus.schema import agent_messages as m
from bus.schema import introspection_events as ie
from coordinator.schema import approvals, fan_arrivals, fan_ins, runs, tokens
from coordinator.state import TOKEN_ACTIVE, WAITING
from coordinator.store import run_view, token_from_row
from coordinator.timefmt import iso, with_iso

MAX_ITEMS = 200
MAX_BRANCHES_SHOWN = 50


def explain(conn: Connection, run_id: str) -> dict[str, Any]:
    """What ``run_id`` waits for: ``{run_id, status, workflow, waiting_for: [...], summary}``.

    Summaries read in words with ISO 8601 times; every epoch field has its ``<key>_iso`` beside it.

    Raises:
        NotFound: no such run.
    """
    run = run_view(conn, run_id)
    base = {"run_id": run_id, "status": run["status"], "workflow": run["workflow"],
            "parent_run_id": run["parent_run_id"]}
    if run["status"] in ("completed", "failed", "cancelled"):
        return with_iso({**base, "waiting_for": [], "error": run["error"], "summary": _ended(run)})
    rows = conn.execute(select(tokens).where(tokens.c.run_id == run_id, tokens.c.status.in_(TOKEN_ACTIVE))
                        .limit(MAX_ITEMS)).mappings().all()
    active = [(token_from_row(r), r["updated_at"]) for r in rows]
    items = [_explain_token(conn, run_id, token, since, active) for token, since in active
             if not _inside_waiting_join(token, active)]
    summary = "; ".join(i["summary"] for i in items) or \
        f"run is {run['status']} since {iso(run['updated_at'])}; no step is active yet"
    return with_iso({**base, "waiting_for": items, "summary": summary})


def _ended(run: dict[str, Any]) -> str:
    if run["status"] == "completed":
        return f"run completed at {iso(run['ended_at'])}; it waits for nothing"
    error = run["error"] or {}
    why = f"{error.get('code', '')} {error.get('message', '')}".strip()
    return f"run {run['status']} at {iso(run['ended_at'])}" + (f": {why}" if why else "")


def _inside_waiting_join(token, active) -> bool:
    """Branch tokens are explained under their join, not on their own."""
    return token.fan_id is not None and any((t.wait or {}).get("fan_id") == token.fan_id for t, _ in active)


def _explain_token(conn: Connection, run_id: str, token, since: float, active) -> dict[str, Any]:
    wait = token.wait or {}
    kind = wait.get("kind") if token.status == WAITING else "task"
    item: dict[str, Any] = {"kind": kind, "token_id": token.id, "node_id": token.node_id, "status": token.status,
                            "since": since}
    explainer = _EXPLAINERS.get(kind)
    if explainer is not None:
        item.update(explainer(conn, run_id, token, active))
    else:
        item["summary"] = f"{token.node_id}: {token.status} since {iso(since)}"
    item["last_decision"] = _last_decision(conn, run_id, token.id)
    return item


def _task(conn: Connection, _run_id: str, token, _active) -> dict[str, Any]:
    row = conn.execute(select(m.c.id, m.c.status, m.c.attempts, m.c.max_attempts, m.c.retry_at, m.c.lease_until,
                              m.c.last_error, m.c.service, m.c.role, m.c.dead_letter, m.c.waiting_for,
                              m.c.waiting_since)
                       .where(m.c.id == token.assignment_id)).first() \
        if token.assignment_id else None
    if row is None:
        return {"summary": f"{token.node_id}: the task is not dispatched yet"}
    route = f"{row.service}.{row.role}"
    detail = {"assignment_id": row.id, "route": route, "assignment_status": row.status,
              "attempt": row.attempts, "max_attempts": row.max_attempts, "last_error": row.last_error}
    if row.status in ("queued", "retry_wait") and row.waiting_for is not None:  # admission deferred it
        deferred = _deferral(conn, _run_id, token.id, row.id)
        detail.update(retry_at=row.retry_at, deferred=deferred, waiting_for=row.waiting_for,
                      waiting_since=row.waiting_since)
        summary = f"{token.node_id}: {_wait(row.id, deferred, row.retry_at)}"
    elif row.status == "retry_wait":
        detail["retry_at"] = row.retry_at
        summary = (f"{token.node_id}: attempt {row.attempts} of {row.max_attempts} failed ({row.last_error}); "
                   f"retry backoff until {iso(row.retry_at)}")
    elif row.status == "dead" and row.dead_letter == ledger.HELD_LETTER:
        detail["dead_letter"] = "held"
        attempts = f"{row.attempts} attempt" + ("s" if row.attempts != 1 else "")
        summary = (f"{token.node_id}: assignment {row.id} is a dead letter after {attempts} ({row.last_error}); "
                   f"an operator can re-queue or discard it: cogo dead-letters requeue {row.id}")
    elif row.status == "running":
        detail["lease_until"] = row.lease_until
        summary = (f"{token.node_id}: attempt {row.attempts} of {row.max_attempts} running on {route} "
                   f"(its lease runs until {iso(row.lease_until)})")
    else:
        summary = f"{token.node_id}: {_ASSIGNMENT_WAITS.get(row.status, f'assignment {row.status}')} on {route}"
    return {**detail, "summary": summary}


def _deferral(conn: Connection, run_id: str, token_id: str, assignment_id: str) -> dict[str, Any]:
    """What the dispatcher said when it deferred the assignment (``dispatch.assignment.deferred``)."""
    found = conn.execute(select(ie.c.data).where(ie.c.run_id == run_id, ie.c.token_id == token_id,
                                                 ie.c.type == "dispatch.assignment.deferred")
                         .order_by(ie.c.id.desc()).limit(1)).scalar()
    return found if isinstance(found, dict) and found.get("assignment_id") == assignment_id else {}


def _wait(assignment_id: str, deferred: dict[str, Any], retry_at: float) -> str:
    """Why an admitted-later assignment waits, in words: what the admission policy that deferred it said."""
    if deferred.get("code", "budget.deferred") == "budget.deferred":
        return _budget_wait(assignment_id, deferred, retry_at)
    return (f"assignment {assignment_id} waits: {deferred.get('message', 'deferred by admission')} "
            f"[{deferred.get('code')}]; asked again at {iso(retry_at)} or as soon as that changes")


def _budget_wait(assignment_id: str, deferred: dict[str, Any], retry_at: float) -> str:
    """Why an admitted-later assignment waits, in words: whose budget, what is spent, held and asked."""
    held = deferred.get("waiting_for") or []
    limit = deferred.get("limit") or "its"
    budget = f" of {deferred['run_budget']:g}" if isinstance(deferred.get("run_budget"), int | float) else ""
    return (f"assignment {assignment_id} waits for budget: run {deferred.get('run_id', '?')}'s {limit} "
            f"budget{budget} has {deferred.get('spent', '?')} spent and {deferred.get('reserved', '?')} reserved by "
            f"{len(held)} assignment(s) in flight ({', '.join(map(str, held[:5]))}{'…' if len(held) > 5 else ''}); "
            f"it asks {deferred.get('asked', '?')}; asked again at {iso(retry_at)} or as soon as one of them "
            f"settles")


_ASSIGNMENT_WAITS = {
    "queued": "waiting for the dispatcher to admit the next attempt",
    "dispatched": "waiting for a worker to take the next attempt",
}


def _join(conn: Connection, run_id: str, token, active) -> dict[str, Any]:
    """Which branches the join still waits for, read from its arrivals (``fan_arrivals``): the brain keeps only
    their count, so that an arrival costs the same at any width; a person asking pays for the list."""
    fan_id = token.wait["fan_id"]
    fan = conn.execute(select(fan_ins).where(fan_ins.c.run_id == run_id, fan_ins.c.fan_id == fan_id)).mappings().first()
    if fan is None:
        return {"fan_id": fan_id, "summary": f"{token.node_id}: join {token.wait.get('join')} (no fan-in row)"}
    arrived = set(conn.execute(select(fan_arrivals.c.branch_index).where(fan_arrivals.c.run_id == run_id,
                                                                         fan_arrivals.c.fan_id == fan_id)).scalars())
    missing = [i for i in range(fan["expected"]) if i not in arrived]
    shown = set(missing[:MAX_BRANCHES_SHOWN])
    running: dict[int, list[dict[str, Any]]] = {}
    for t, since in active:
        if t.fan_id == fan_id and t.branch_index in shown:
            running.setdefault(t.branch_index, []).append(_explain_token(conn, run_id, t, since, active))
    branches = [{"branch_index": i, "waiting_for": running.get(i, [])} for i in missing[:MAX_BRANCHES_SHOWN]]
    return {"fan_id": fan_id, "join": fan["join_node"], "arrived": len(arrived), "expected": fan["expected"],
            "missing": branches, "missing_count": len(missing),
            "summary": f"join {fan['join_node']!r}: {len(arrived)} of {fan['expected']} branches arrived; "
                       f"missing {missing[:10]}{'…' if len(missing) > 10 else ''}{_admission_waits(running)}"}


def _admission_waits(running: dict[int, list[dict[str, Any]]]) -> str:
    """What the shown branches' deferred assignments wait for, each reason once with how many wait for it."""
    reasons: dict[str, int] = {}
    for items in running.values():
        for item in items:
            deferred = item.get("deferred") or {}
            if deferred.get("message"):
                reasons[f"{deferred['message']} [{deferred.get('code')}]"] = reasons.get(
                    f"{deferred['message']} [{deferred.get('code')}]", 0) + 1
    return "".join(f"; {n} of them not admitted yet: {why}" for why, n in reasons.items())


def _approval(conn: Connection, _run_id: str, token, _active) -> dict[str, Any]:
    approval_id = token.wait.get("approval_id")
    row = conn.execute(select(approvals).where(approvals.c.id == approval_id)).mappings().first()
    if row is None:
        return {"approval_id": approval_id, "summary": f"{token.node_id}: approval {approval_id} (no row)"}
    until = f", answer due by {iso(row['expires_at'])}" if row["expires_at"] else ""
    if row["status"] == "pending":
        said = f"waits for a person to approve or reject approval {approval_id}"
    else:
        said = f"approval {approval_id} is {row['status']}; the run is applying the decision"
    return {"approval_id": approval_id, "prompt": row["prompt"], "requested_at": row["requested_at"],
            "expires_at": row["expires_at"], "approval_status": row["status"],
            "summary": f"{token.node_id}: {said} (pending since {iso(row['requested_at'])}{until})"}


def _timer(_conn: Connection, _run_id: str, token, _active) -> dict[str, Any]:
    fire_at = token.wait.get("fire_at")
    return {"fire_at": fire_at, "summary": f"{token.node_id}: waits for a timer that fires at {iso(fire_at)}"}


def _event(_conn: Connection, run_id: str, token, _active) -> dict[str, Any]:
    name = token.wait.get("event")
    return {"event": name, "summary": f"{token.node_id}: waits for the external signal {name!r} "
                                      f"(POST /api/runs/{run_id}/signals/{name})"}


def _child(conn: Connection, _run_id: str, token, _active) -> dict[str, Any]:
    child_id = token.child_run_id or token.wait.get("child_run_id")
    child = conn.execute(select(runs.c.status, runs.c.workflow).where(runs.c.id == child_id)).first()
    status = child.status if child else "unknown"
    return {"child_run_id": child_id, "child_status": status,
            "summary": f"{token.node_id}: waits for child run {child_id} ({token.wait.get('workflow')}), "
                       f"which is {status}"}


_EXPLAINERS = {"task": _task, "join": _join, "approval": _approval, "timer": _timer, "event": _event,
               "child": _child}


def _last_decision(conn: Connection, run_id: str, token_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(ie.c.type, ie.c.data, ie.c.created_at)
                       .where(ie.c.run_id == run_id, ie.c.token_id == token_id, ie.c.category == "decision")
                       .order_by(ie.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    data = row.data or {}
    return {"type": row.type, "reason": data.get("reason"), "at": row.created_at,
            "data": {k: v for k, v in data.items() if k != "reason"}}
