"""A pure simulator for planning tests: a state, events in, plans out — no database, no clock, no broker.

Each command plans against the current state and goes on from the plan's next state (what phase 1 would
write), exactly as replay does.
"""

from __future__ import annotations

from typing import Any

import yaml

from coordinator import decisions as d
from coordinator import events as ev
from coordinator.definitions import WorkflowDefinition, parse_definition
from coordinator.planning import Plan, plan
from coordinator.state import RunInfo, WorkflowState

RUN_ID = "00000000-0000-4000-8000-000000000001"
T0 = 1_800_000_000.0


def definition(text_or_dict: str | dict) -> WorkflowDefinition:
    """A validated definition from YAML text or a dict."""
    raw = yaml.safe_load(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    return parse_definition(raw)


class Sim:
    """One run of one definition, driven by hand."""

    def __init__(self, wf: str | dict | WorkflowDefinition, input: dict | None = None, *,
                 catalog: dict[str, tuple[int, ...]] | None = None, run_id: str = RUN_ID,
                 parent_run_id: str | None = None, depth: int = 0):
        self.definition = wf if isinstance(wf, WorkflowDefinition) else definition(wf)
        run = RunInfo(id=run_id, tenant="acme", intent=self.definition.name, workflow=self.definition.name,
                      workflow_version=self.definition.version, status="pending", input=input or {},
                      parent_run_id=parent_run_id, parent_token_id="parent.1" if parent_run_id else None,
                      root_run_id=run_id, depth=depth)
        self.state = WorkflowState(run=run, definition=self.definition, catalog=catalog or {})
        self.now = T0
        self.plans: list[Plan] = []
        self._ids = 0

    # -- commands ------------------------------------------------------------------------------------
    def send(self, event_type: type[ev.Event], **fields: Any) -> Plan:
        """Plan one event, read from its decide row's payload as the brain reads it, against the current state,
        and go on from the state it leads to."""
        self._ids += 1
        event = ev.from_row(id=f"e{self._ids}", run_id=self.state.run.id, kind=event_type.kind, payload=fields)
        planned = plan(self.state, event, now=self.now)
        self.state = planned.next_state
        self.plans.append(planned)
        return planned

    def start(self) -> Plan:
        """The start event."""
        return self.send(ev.Start)

    def complete(self, token_id: str, output: Any = None, *, attempts: int = 1) -> Plan:
        """A task's assignment finished."""
        token = self.state.tokens.get(token_id)
        return self.send(ev.TaskCompleted, token_id=token_id, output=output if output is not None else {},
                         assignment_id=token.assignment_id if token else "gone", attempts=attempts)

    def fail(self, token_id: str, code: str = "work.failed") -> Plan:
        """A task's assignment failed for good."""
        token = self.state.tokens.get(token_id)
        return self.send(ev.TaskFailed, token_id=token_id, assignment_id=token.assignment_id if token else "gone",
                         error={"code": code, "message": "it broke"})

    def timer(self, token_id: str, purpose: str) -> Plan:
        """A durable timer fired."""
        return self.send(ev.Timer, token_id=token_id, purpose=purpose)

    # -- views ---------------------------------------------------------------------------------------
    def active(self, node_id: str | None = None) -> list[str]:
        """Active token ids (at ``node_id``), in creation order."""
        return [t.id for t in self.state.active_tokens() if node_id is None or t.node_id == node_id]

    def dispatched(self) -> list[str]:
        """Token ids waiting on a dispatched assignment, in creation order."""
        return [t.id for t in self.state.active_tokens() if t.status == "dispatched"]

    def drain(self, output_for=lambda token: {}, limit: int = 10_000) -> None:
        """Complete every dispatched task, oldest first, until none is left."""
        for _ in range(limit):
            pending = self.dispatched()
            if not pending:
                return
            token = self.state.tokens[pending[0]]
            self.complete(token.id, output_for(token))
        raise AssertionError("drain did not settle")

    @property
    def status(self) -> str:
        """The run's status."""
        return self.state.run.status


def types(p: Plan, prefix: str = "decision.") -> list[str]:
    """Event types of a plan starting with ``prefix``: by default what planning chose and why (a plan also holds
    the ``operation.*`` events that say what each decision did to the state)."""
    return [e.type for e in p.events if e.type.startswith(prefix)]


def events(p: Plan, type_: str) -> list[dict[str, Any]]:
    """The data of a plan's events of one type."""
    return [dict(e.data) for e in p.events if e.type == type_]


def decisions(p: Plan, kind: type[d.Decision] | None = None) -> list[d.Decision]:
    """A plan's decisions (of one type)."""
    return [x for x in p.decisions if kind is None or isinstance(x, kind)]


def all_types(sim: Sim, prefix: str = "decision.") -> list[str]:
    """Event types across every plan of a simulation."""
    return [t for p in sim.plans for t in types(p, prefix)]


def all_decisions(sim: Sim, kind: type[d.Decision]) -> list[d.Decision]:
    """Decisions of one type across every plan."""
    return [x for p in sim.plans for x in decisions(p, kind)]
