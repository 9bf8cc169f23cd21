"""Counterfactual replay: a recorded run's events, fed back through the pure planner.

The ledger holds every event the brain applied to a run (its decide rows, ordered by the run version
each one produced, with the ``now`` it was planned at). Starting from the run's initial state and
taking each plan's next state (what phase 1 wrote, computed by the same code) rebuilds the state before
every event, so each event can be planned again — under the recorded definition, to check that the planner
still makes the recorded decisions, or under a changed one, to see how the decisions would differ.
No worker, model or broker is involved.

A changed definition can only be asked about the events that were recorded: once its decisions diverge
(another node dispatched, another token id), later outcomes may no longer match a token it created and
are ignored by it. The first difference is the one that matters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from bus import ledger
from bus.introspection import read
from bus.routing import DECIDE, ORCHESTRATOR
from bus.schema import agent_messages as m
from coordinator import events as ev
from coordinator.definitions import Registry, WorkflowDefinition, load_yaml
from coordinator.planning import Plan, plan
from coordinator.schema import runs
from coordinator.state import RUN_PENDING, WorkflowState
from coordinator.store import run_info

__all__ = ["RecordedEvent", "Step", "as_json", "initial_state", "recorded_events", "replay",
           "replay_events", "replay_run"]


@dataclass(frozen=True)
class RecordedEvent:
    """One event the brain applied: the event, when it was planned, and the run version it produced."""

    event: ev.Event
    now: float
    run_version: int

    def describe(self) -> dict[str, Any]:
        """The event as plain data (golden files, reports)."""
        return {"kind": self.event.kind, "id": self.event.id, "payload": as_json(self.event.payload())}


@dataclass(frozen=True)
class Step:
    """One replayed event: the state it met and the plan it produced."""

    index: int
    recorded: RecordedEvent
    state: WorkflowState
    plan: Plan

    def decisions(self) -> list[dict[str, Any]]:
        """The plan's decisions as plain data."""
        return [as_json(x.describe()) for x in self.plan.decisions]

    def event_types(self) -> list[str]:
        """The types of the plan's introspection events."""
        return [e.type for e in self.plan.events]

    def introspection(self) -> list[dict[str, Any]]:
        """The plan's introspection events whole: type, token, node and data (for golden histories)."""
        return [event_json(e) for e in self.plan.events]


def event_json(event: Any) -> dict[str, Any]:
    """One planned introspection event as JSON: its type, token, node and data."""
    return as_json({"type": event.type, "token_id": event.token_id, "node_id": event.node_id, "data": event.data})


def as_json(value: Any) -> Any:
    """JSON-shaped (tuples become lists), exactly as it would read back from a file or the ledger."""
    return json.loads(json.dumps(value, default=str))


def recorded_events(conn: Connection, run_id: str) -> list[RecordedEvent]:
    """The events the brain applied to ``run_id``, in the order it applied them."""
    rows = conn.execute(select(m.c.id, m.c.kind, m.c.payload, m.c.updated_at, m.c.run_version)
                        .where(m.c.run_id == run_id, m.c.service == ORCHESTRATOR, m.c.role == DECIDE,
                               m.c.status == ledger.DONE)).all()
    found = []
    for row in rows:
        version = row.run_version
        if version is None:
            continue  # applied before versions were recorded: cannot be placed in the history
        found.append(RecordedEvent(ev.from_row(id=row.id, run_id=run_id, kind=row.kind, payload=row.payload),
                                   row.updated_at, version))
    return sorted(found, key=lambda r: r.run_version)


def initial_state(run: Any, definition: WorkflowDefinition, catalog: dict[str, tuple[int, ...]]) -> WorkflowState:
    """The state of a run before its first event: pending, empty context, no tokens."""
    info = run_info({**dict(run), "status": RUN_PENDING, "version": 0})
    return WorkflowState(run=info, definition=definition, catalog=catalog)


def replay_events(state: WorkflowState, recorded: list[RecordedEvent]) -> list[Step]:
    """Plan every event again, each against the state the previous plans left."""
    steps = []
    for index, item in enumerate(recorded):
        planned = plan(state, item.event, now=item.now)
        steps.append(Step(index, item, state, planned))
        state = planned.next_state
    return steps


def _run_row(conn: Connection, run_id: str) -> Any:
    from bus.errors import NotFound

    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run {run_id}", code="run.unknown")
    return row


def replay(conn: Connection, run_id: str, *, registry: Registry,
           definition: WorkflowDefinition | None = None) -> list[dict[str, Any]]:
    """How the decisions of ``run_id`` would differ under ``definition`` (none: under the recorded one).

    Returns:
        One entry per event whose decisions differ: ``{index, event, recorded, replayed}``.
    """
    row = _run_row(conn, run_id)
    recorded = recorded_events(conn, run_id)
    original = registry.get(row["workflow"], row["workflow_version"])
    base = replay_events(initial_state(row, original, registry.catalog(original)), recorded)
    other = definition or original
    changed = replay_events(initial_state(row, other, registry.catalog(other)), recorded)
    return diff_steps(base, changed)


def diff_steps(base: list[Step], changed: list[Step]) -> list[dict[str, Any]]:
    """The events whose decisions differ between two replays of the same history."""
    differences = []
    for a, b in zip(base, changed, strict=True):
        if a.decisions() != b.decisions():
            differences.append({"index": a.index, "event": a.recorded.describe(), "recorded": a.decisions(),
                                "replayed": b.decisions(), "recorded_events": a.event_types(),
                                "replayed_events": b.event_types()})
    return differences


def fidelity(conn: Connection, run_id: str, steps: list[Step]) -> dict[str, Any]:
    """Whether replaying reproduces the trace the brain recorded for the run: what it decided and why
    (``decision.*``) and what each decision did to the state (``operation.*``), event by event."""
    planned = ("decision", "operation")
    trace = [(e["type"], e["token_id"], e["node_id"], e["data"]) for e in every_event(conn, run_id, planned)]
    replayed, owner = [], []
    for step in steps:
        for e in step.plan.events:
            if e.category in planned:
                replayed.append((e.type, e.token_id, e.node_id, as_json(dict(e.data))))
                owner.append(step.index)
    for i, (a, b) in enumerate(zip(trace, replayed, strict=False)):
        if a != b:
            return {"faithful": False, "first_mismatch": {"event_index": owner[i], "recorded": list(a),
                                                           "replayed": list(b)}}
    if len(trace) != len(replayed):
        return {"faithful": False, "first_mismatch": {"recorded_count": len(trace), "replayed_count": len(replayed)}}
    return {"faithful": True, "first_mismatch": None}


def every_event(conn: Connection, run_id: str, categories: tuple[str, ...], *, page: int = 10_000
                ) -> list[dict[str, Any]]:
    """Every event of these categories, page by page (a wide run writes more than one read returns)."""
    events: list[dict[str, Any]] = []
    while batch := read(conn, run_id, category=categories, after_id=events[-1]["id"] if events else 0, limit=page):
        events += batch
    return events


def replay_run(engine: Engine, run_id: str, definition_path: str | Path | None = None, *,
               registry: Registry | None = None) -> dict[str, Any]:
    """The report behind ``cogo replay <run-id> [--definition FILE]`` (plain JSON data).

    Replays the run's recorded events through the planner, checks that the recorded definition still
    yields the recorded decisions (``faithful``), and, given a definition file, lists the events whose
    decisions would differ under it (``differences``; the first is where the runs part ways).

    Raises:
        NotFound: no such run (or its recorded workflow is no longer registered).
        ContractError: the definition file is not a valid workflow.
    """
    registry = registry or Registry.builtin()
    changed = load_yaml(Path(definition_path)) if definition_path else None
    with engine.connect() as conn:
        row = _run_row(conn, run_id)
        recorded = recorded_events(conn, run_id)
        original = registry.get(row["workflow"], row["workflow_version"])
        base = replay_events(initial_state(row, original, registry.catalog(original)), recorded)
        check = fidelity(conn, run_id, base)
    report: dict[str, Any] = {"run_id": run_id, "workflow": original.name, "version": original.version,
                              "status": row["status"], "events": len(recorded), **check,
                              "definition": str(definition_path) if definition_path else None, "differences": []}
    if changed is not None:
        other = replay_events(initial_state(row, changed, registry.catalog(changed)), recorded)
        report["differences"] = diff_steps(base, other)
    report["summary"] = _summary(report, changed)
    return report


def _summary(report: dict[str, Any], changed: WorkflowDefinition | None) -> str:
    head = (f"run {report['run_id']} ({report['workflow']} v{report['version']}): {report['events']} events "
            f"replayed; recorded decisions {'reproduced' if report['faithful'] else 'NOT reproduced'}")
    if changed is None:
        return head
    diffs = report["differences"]
    if not diffs:
        return f"{head}; {changed.name} v{changed.version} makes the same decisions"
    first = diffs[0]
    return (f"{head}; {changed.name} v{changed.version} decides differently at {len(diffs)} event(s), first at "
            f"event {first['index']} ({first['event']['kind']})")
