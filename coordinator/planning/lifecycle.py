"""Start, cancel and giving up: the commands that begin and end a run as a whole."""

from __future__ import annotations

from coordinator import decisions as d
from coordinator import events as ev
from coordinator.planning.builder import PlanBuilder
from coordinator.planning.transitions import cancel_others, enter, fail_workflow
from coordinator.state import RUN_PENDING, RUN_TERMINAL


def on_start(b: PlanBuilder, event: ev.Start) -> None:
    """Initialise the run and enter its start node."""
    if b.status != RUN_PENDING:
        b.emit("decision.event.ignored", kind=event.kind, reason=f"run already {b.status}")
        return
    b.emit("decision.routing.start", workflow=b.definition.name, version=b.definition.version,
           start=b.definition.start)
    b.decide(d.InitializeWorkflow())
    b.status = "running"
    enter(b, b.definition.start)


def on_cancel(b: PlanBuilder, event: ev.Cancel) -> None:
    """Cancel every active token and the run."""
    cancel_others(b, reason=event.reason)
    b.emit("decision.workflow.cancel", reason=event.reason)
    b.decide(d.CancelWorkflow(event.reason))
    b.status = "cancelled"


def on_gave_up(b: PlanBuilder, event: ev.GaveUp) -> None:
    """The brain could not apply one of the run's events: fail the run (started or not) as any failure does."""
    if b.status in RUN_TERMINAL:
        b.emit("decision.event.ignored", kind=event.kind, reason=f"run already {b.status}")
        return
    fail_workflow(b, event.error)
