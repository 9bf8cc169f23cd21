"""Pure planning: ``plan(state, event, now) -> Plan``; one function per command, no I/O, no clock.

A domain failure is a ``FailWorkflow`` decision, never an exception. Each command's planner returns the
complete flat list of decisions — execution never plans again.
"""

from __future__ import annotations

from collections.abc import Callable

from coordinator import events as ev
from coordinator.planning import routing, tasks  # noqa: F401  (registers entry rules)
from coordinator.planning.builder import Plan, PlanBuilder
from coordinator.planning.lifecycle import on_cancel, on_start
from coordinator.planning.tasks import on_task_completed, on_task_failed, on_timer
from coordinator.state import RUN_TERMINAL, WorkflowState

Planner = Callable[[PlanBuilder, ev.Event], None]
PLANNERS: dict[type[ev.Event], Planner] = {
    ev.Start: on_start,
    ev.TaskCompleted: on_task_completed,
    ev.TaskFailed: on_task_failed,
    ev.Timer: on_timer,
    ev.Cancel: on_cancel,
}
"""The planner of each command; the planning modules for people, children and joins add theirs."""


def plan(state: WorkflowState, event: ev.Event, *, now: float) -> Plan:
    """Decide what ``event`` means for the run in ``state``."""
    b = PlanBuilder(state, now=now)
    if state.run.status in RUN_TERMINAL:
        b.emit("decision.event.ignored", kind=event.kind, reason=f"run is already {state.run.status}")
        return b.plan()
    planner = PLANNERS.get(type(event))
    if planner is None:
        b.emit("decision.event.ignored", kind=event.kind, reason="no planner for this event kind")
        return b.plan()
    planner(b, event)
    return b.plan()


__all__ = ["PLANNERS", "Plan", "PlanBuilder", "plan"]
