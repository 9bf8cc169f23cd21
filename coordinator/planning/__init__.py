"""Pure planning: ``plan(state, event, now) -> Plan``; one function per command, no I/O, no clock.

A domain failure is a ``FailWorkflow`` decision, never an exception. Each command's planner returns the
complete flat list of decisions — execution never plans again.
"""

from __future__ import annotations

from collections.abc import Callable

from coordinator import decisions as d
from coordinator import events as ev
from coordinator.planning import fanout, tasks, transitions  # noqa: F401  (registers entry rules)
from coordinator.planning.builder import Plan, PlanBuilder
from coordinator.planning.children import on_child_completed, on_child_failed
from coordinator.planning.lifecycle import on_cancel, on_gave_up, on_start
from coordinator.planning.people import on_approval
from coordinator.planning.tasks import on_task_completed, on_task_failed
from coordinator.planning.timers import on_signal, on_timer
from coordinator.state import RUN_PENDING, RUN_TERMINAL, WorkflowState

Planner = Callable[[PlanBuilder, ev.Event], None]
PLANNERS: dict[type[ev.Event], Planner] = {
    ev.Start: on_start,
    ev.TaskCompleted: on_task_completed,
    ev.TaskFailed: on_task_failed,
    ev.Timer: on_timer,
    ev.Cancel: on_cancel,
    ev.ApprovalDecided: on_approval,
    ev.Signal: on_signal,
    ev.ChildCompleted: on_child_completed,
    ev.ChildFailed: on_child_failed,
    ev.GaveUp: on_gave_up,
}
"""The planner of each command."""

BEFORE_START = (ev.Start, ev.Cancel, ev.GaveUp)
"""The only commands that mean anything to a run that has not started."""


def plan(state: WorkflowState, event: ev.Event, *, now: float) -> Plan:
    """Decide what ``event`` means for the run in ``state``."""
    b = PlanBuilder(state, now=now)
    if isinstance(event, (ev.TaskCompleted, ev.TaskFailed, ev.GaveUp)) and event.assignment_id:
        # Whatever the outcome means for the run (even nothing, for a run that ended, or an outcome the brain
        # gave up on), its spend is settled.
        b.emit("decision.assignment.settle", assignment_id=event.assignment_id,
               reason="its outcome reached the brain")
        b.decide(d.SettleAssignment(event.assignment_id))
    if state.run.status in RUN_TERMINAL:
        b.emit("decision.event.ignored", kind=event.kind, reason=f"run is already {state.run.status}")
        return b.plan()
    if state.run.status == RUN_PENDING and not isinstance(event, BEFORE_START):
        b.emit("decision.event.ignored", kind=event.kind, reason="run has not started")
        return b.plan()
    planner = PLANNERS.get(type(event))
    if planner is None:
        b.emit("decision.event.ignored", kind=event.kind, reason="no planner for this event kind")
        return b.plan()
    planner(b, event)
    return b.plan()


__all__ = ["PLANNERS", "Plan", "PlanBuilder", "plan"]
