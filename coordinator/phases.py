"""Seed 004's phase form: phases of tasks assigned to agent types, compiled to the graph the planner runs.

A phase-form definition (a top-level ``phases:`` key) names its agent types (each a worker route with its
assignment defaults), its phases in order (``development``, ``devops``, ``monitoring`` …) with their tasks,
the phase-to-agent-type table (seed 004's ``PHASE_AGENT_TYPES`` unless given), a success-rate gate and a
bounded feedback loop. ``compile_phases`` turns it into an ordinary definition (plain data, validated by
``coordinator.definitions`` like any other), so planning, explain and replay see nothing new:

- a phase with tasks is a ``parallel`` node with one branch, in which the tasks run in order; every task's
  ``on_failure`` goes on to the next task (best effort: a failed task is recorded, the phase goes on);
- the branch's ``join`` puts the phase's results in ``context.<phase>`` (a one-row list: ``[0].<task>``
  holds each task that succeeded in this pass, nothing for one that failed — a new pass starts clean);
- a ``gate`` compares the share of tasks that succeeded with ``required_success_rate``; under it, the run
  fails with ``phase.gate_failed`` (rate and threshold in the error's ``details.output``);
- a phase without tasks is a ``gate`` that records ``skipped`` (seed 004's skipped phase) and goes on;
- the feedback loop is a ``gate`` after its ``from`` phase that goes back to its ``to`` phase while
  ``when`` holds; the workflow's ``max_loops`` is ``max_feedback_loops``, so one loop too many fails the
  run with ``loop.max_feedback_loops`` (seed 004's ``MAX_FEEDBACK_LOOPS``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bus.errors import ContractError
from coordinator.expressions import compile_expression

PHASE_AGENT_TYPES: dict[str, tuple[str, ...]] = {
    "development": ("coding", "review", "test_data", "test"),
    "devops": ("devops", "deploying"),
    "monitoring": ("monitor",),
}
"""Seed 004's table: which agent types may work in each phase (a definition may give its own)."""

DEFAULT_MAX_FEEDBACK_LOOPS = 3
DONE = "workflow--done"
"""The compiled graph's final end node (``--`` never occurs in a phase's own node ids)."""
_NAME = r"^[a-z][a-z0-9_]{0,29}$"
_RESERVED_TASK_NAMES = frozenset({"branch", "index", "item"})
"""Keys the branch scope already holds: a task of that name would hide them."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AgentType(_Model):
    """Who does a task of this type: a worker route (``service.role``) and the assignment's defaults."""

    route: str = Field(pattern=r"^[^.\s]+\.[^\s]+$")
    agent: dict[str, Any] = Field(default_factory=dict)
    """``agent_id`` (the type's name by default), ``version``, ``model``, ``budget``, ``ttl_ms``."""
    retry: dict[str, Any] | None = None
    timeout_ms: int | None = Field(default=None, gt=0)


class PhaseTask(_Model):
    """One task, assigned to an agent type (seed 004's ``TaskDefinition(name, assigned_to)``)."""

    name: str = Field(pattern=_NAME)
    assigned_to: str
    description: str = ""
    input: Any = Field(default_factory=dict)
    retry: dict[str, Any] | None = None
    timeout_ms: int | None = Field(default=None, gt=0)


class PhaseGate(_Model):
    """Seed 004's ``PhaseGatePolicy``: the share of a phase's tasks that must succeed to go on."""

    required_success_rate: float = Field(default=0.0, ge=0.0, le=1.0)


class Phase(_Model):
    """A phase: its tasks run in order, best effort, then its gate decides whether the run goes on."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    tasks: list[PhaseTask] = Field(default_factory=list)
    gate: PhaseGate | None = None


class Feedback(_Model):
    """Seed 004's feedback loop: after ``from``, go back to ``to`` while ``when`` holds, at most
    ``max_feedback_loops`` times."""

    source: str = Field(alias="from")
    to: str
    when: str
    max_feedback_loops: int = Field(default=DEFAULT_MAX_FEEDBACK_LOOPS, ge=0, le=1000)

    @field_validator("when")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            compile_expression(v)
        except ContractError as exc:
            raise ValueError(str(exc)) from None
        return v


class PhaseWorkflow(_Model):
    """A whole phase-form definition (see the module docstring)."""

    name: str
    version: int = 1
    description: str = ""
    input: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    agent_types: dict[str, AgentType] = Field(min_length=1)
    phase_agent_types: dict[str, list[str]] | None = None
    phases: list[Phase] = Field(min_length=1)
    tasks: list[PhaseTask] = Field(default_factory=list)
    """Seed 004's flat form: tasks placed in the one listed phase whose agent types include theirs."""
    gate: PhaseGate = Field(default_factory=PhaseGate)
    feedback: Feedback | None = None
    output: Any = None

    @model_validator(mode="before")
    @classmethod
    def _phase_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("phases"), list):
            data = {**data, "phases": [{"name": p} if isinstance(p, str) else p for p in data["phases"]]}
        return data


def is_phase_form(raw: Any) -> bool:
    """Whether a raw definition is written in the phase form (it has a top-level ``phases`` key)."""
    return isinstance(raw, dict) and "phases" in raw


def compile_phases(raw: dict[str, Any], *, source: str = "definition") -> dict[str, Any]:
    """The graph definition (plain data, for ``parse_definition``) of a phase-form definition.

    Raises:
        ContractError: ``definition.invalid`` for a malformed form; ``phase.invalid`` for duplicate,
            unknown or reserved names; ``phase.agent_type_unknown`` for a task of an agent type the
            definition does not declare; ``phase.agent_type_not_allowed`` for a task of a type the phase's
            row of the table does not allow; ``phase.agent_type_unmapped`` for a flat task whose type
            belongs to no listed phase, or to more than one.
    """
    if "nodes" in raw:
        raise ContractError(f"{source}: a definition has either 'phases' or 'nodes', not both",
                            code="definition.invalid", details={"field": "nodes"})
    try:
        form = PhaseWorkflow.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ContractError(f"{source}: {where}: {first['msg'].removeprefix('Value error, ')}",
                            code="definition.invalid", details={"field": where}) from None
    table = {k: tuple(v) for k, v in (form.phase_agent_types or PHASE_AGENT_TYPES).items()}
    phases = _placed(form, table, source)
    return {
        "name": form.name, "version": form.version, "description": form.description,
        **({"input": form.input} if form.input is not None else {}),
        **({"budget": form.budget} if form.budget is not None else {}),
        "start": phases[0].name,
        "max_loops": form.feedback.max_feedback_loops if form.feedback else 0,
        "nodes": _nodes(form, phases),
    }


def _placed(form: PhaseWorkflow, table: dict[str, tuple[str, ...]], source: str) -> list[Phase]:
    """The phases with the flat tasks placed in their phase and every task checked against the table."""
    names = [p.name for p in form.phases]
    for name in names:
        if names.count(name) > 1:
            raise _unfit(source, "phase.invalid", f"phase {name!r} is listed twice", phase=name)
        if name not in table:
            raise _unfit(source, "phase.invalid", f"phase {name!r} has no row in the phase-to-agent-type table "
                         f"(known: {', '.join(sorted(table))})", phase=name)
    placed = {p.name: list(p.tasks) for p in form.phases}
    for task in form.tasks:
        homes = [n for n in names if task.assigned_to in table[n]]
        if len(homes) != 1:
            where = "no listed phase" if not homes else f"phases {', '.join(homes)}"
            raise _unfit(source, "phase.agent_type_unmapped", f"task {task.name!r}: agent type "
                         f"{task.assigned_to!r} belongs to {where}; it must belong to exactly one",
                         task=task.name, agent_type=task.assigned_to)
        placed[homes[0]].append(task)
    for phase in names:
        _check_tasks(form, phase, placed[phase], table[phase], names, source)
    if form.feedback:
        fb = form.feedback
        for end in (fb.source, fb.to):
            if end not in names:
                raise _unfit(source, "phase.invalid", f"feedback names unknown phase {end!r}", phase=end)
        if names.index(fb.to) > names.index(fb.source):
            raise _unfit(source, "phase.invalid", f"feedback goes back from {fb.source!r} to {fb.to!r}, which "
                         f"comes after it", phase=fb.to)
    return [p.model_copy(update={"tasks": placed[p.name]}) for p in form.phases]


def _check_tasks(form: PhaseWorkflow, phase: str, tasks: list[PhaseTask], allowed: tuple[str, ...],
                 phase_names: list[str], source: str) -> None:
    """Every task of ``phase`` has a declared agent type the phase allows, and a name of its own."""
    seen: set[str] = set()
    for task in tasks:
        about = {"phase": phase, "task": task.name, "agent_type": task.assigned_to}
        if task.assigned_to not in form.agent_types:
            raise _unfit(source, "phase.agent_type_unknown", f"task {task.name!r}: agent type "
                         f"{task.assigned_to!r} is not declared (known: {', '.join(sorted(form.agent_types))})",
                         **about)
        if task.assigned_to not in allowed:
            raise _unfit(source, "phase.agent_type_not_allowed", f"task {task.name!r}: agent type "
                         f"{task.assigned_to!r} may not work in phase {phase!r} (allowed: {', '.join(allowed)})",
                         allowed=list(allowed), **about)
        if task.name in seen or task.name in _RESERVED_TASK_NAMES or task.name in phase_names:
            raise _unfit(source, "phase.invalid", f"task {task.name!r} of phase {phase!r}: a task's name must be "
                         f"unique in its phase and be neither a phase's name nor one of "
                         f"{', '.join(sorted(_RESERVED_TASK_NAMES))}", **about)
        seen.add(task.name)


def _unfit(source: str, code: str, message: str, **details: Any) -> ContractError:
    """A phase-form definition that does not fit, named by its source."""
    return ContractError(f"{source}: {message}", code=code, details=details)


def _nodes(form: PhaseWorkflow, phases: list[Phase]) -> dict[str, Any]:
    """Every node of the compiled graph, phase by phase, then the final end."""
    nodes: dict[str, Any] = {}
    for i, phase in enumerate(phases):
        after = phases[i + 1].name if i + 1 < len(phases) else DONE
        if form.feedback and form.feedback.source == phase.name:
            nodes[f"{phase.name}--feedback"] = {
                "kind": "gate", "assert": form.feedback.when, "pass": form.feedback.to, "fail": after,
                "description": f"seed 004's feedback loop: back to phase {form.feedback.to!r} while this holds "
                               f"(at most {form.feedback.max_feedback_loops} times)"}
            after = f"{phase.name}--feedback"
        if not phase.tasks:
            nodes[phase.name] = {"kind": "gate", "assert": "'skipped'", "pass": after, "fail": after,
                                 "description": f"phase {phase.name!r} has no tasks: skipped"}
        else:
            nodes.update(_phase_nodes(form, phase, after))
    nodes[DONE] = {"kind": "end", "description": "every phase passed its gate",
                   **({"output": form.output} if form.output is not None else {})}
    return nodes


def _phase_nodes(form: PhaseWorkflow, phase: Phase, after: str) -> dict[str, Any]:
    """One phase: a one-branch fan-out of its tasks in order, the join, the gate and the gate's failure."""
    p, threshold = phase.name, (phase.gate or form.gate).required_success_rate
    ids = [f"{p}-{t.name}" for t in phase.tasks]
    nodes: dict[str, Any] = {p: {"kind": "parallel", "branches": [ids[0]], "join": f"{p}--join",
                                 "description": phase.description or f"phase {p!r}: "
                                 + ", ".join(t.name for t in phase.tasks)}}
    for task, node_id, nxt in zip(phase.tasks, ids, [*ids[1:], f"{p}--join"], strict=True):
        nodes[node_id] = _task_node(form.agent_types[task.assigned_to], task, nxt)
    succeeded = {t.name: f"contains(keys(context.{p}[0]), '{t.name}')" for t in phase.tasks}
    rate = "avg([" + ", ".join(f"{s} && `1` || `0`" for s in succeeded.values()) + "])"
    nodes[f"{p}--join"] = {"kind": "join", "mode": "all", "output": p, "next": f"{p}--gate",
                           "description": f"phase {p!r}: its tasks' results, in context.{p}[0]"}
    nodes[f"{p}--gate"] = {"kind": "gate", "success_rate": {"value": rate, "threshold": threshold},
                           "pass": after, "fail": f"{p}--gate-failed",
                           "description": f"seed 004's phase gate: at least {threshold:g} of phase {p!r}'s "
                                          f"tasks succeeded"}
    nodes[f"{p}--gate-failed"] = {
        "kind": "end", "status": "failed", "code": "phase.gate_failed",
        "message": f"phase {p!r} failed its gate: fewer than {threshold:g} of its tasks succeeded",
        "output": {"phase": {"$literal": p}, "success_rate": f'context."{p}--gate".value',
                   "required_success_rate": {"$literal": threshold}, "succeeded": succeeded}}
    return nodes


def _task_node(agent_type: AgentType, task: PhaseTask, nxt: str) -> dict[str, Any]:
    """A task node on its agent type's route; a failure goes on to ``nxt`` like a success (best effort)."""
    service, role = agent_type.route.split(".", 1)
    retry = task.retry if task.retry is not None else agent_type.retry
    timeout_ms = task.timeout_ms or agent_type.timeout_ms
    return {"kind": "task", "route": {"service": service, "role": role},
            "agent": {"agent_id": task.assigned_to, **agent_type.agent},
            "description": task.description or f"{task.assigned_to} task {task.name!r}",
            "input": task.input, "output": task.name, "next": nxt, "on_failure": nxt,
            **({"retry": retry} if retry is not None else {}),
            **({"timeout_ms": timeout_ms} if timeout_ms is not None else {})}


__all__ = ["DONE", "PHASE_AGENT_TYPES", "PhaseWorkflow", "compile_phases", "is_phase_form"]
