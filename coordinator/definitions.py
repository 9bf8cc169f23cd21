"""Workflow definitions are data: YAML validated into typed, frozen models.

An error names the node and the field that is wrong and why. Definitions are versioned by
``(name, version)``. Expressions (conditions, mappings) are JMESPath and are compiled when a definition
is loaded, so a typo fails at load time, not in the middle of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bus.envelope import Assignment, Budget
from bus.errors import ContractError, NotFound
from bus.retry import NO_RETRY, RetryPolicy
from bus.routing import Route
from coordinator.expressions import compile_expression
from coordinator.inputs import check_schema, object_schema
from coordinator.phases import compile_phases, is_phase_form

DEFAULT_MAX_LOOPS = 3
_NODE_ID = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Transition(_Model):
    """An edge: go ``to`` a node when ``when`` (a JMESPath condition) holds; no ``when`` always holds."""

    to: str
    when: str | None = None

    @field_validator("when")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            compile_expression(v)
        return v


def _as_transitions(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"to": value}]
    return value


class _Node(_Model):
    description: str = ""
    next: list[Transition] = Field(default_factory=list)
    timeout_ms: int | None = Field(default=None, gt=0)

    @field_validator("next", mode="before")
    @classmethod
    def _next(cls, v: Any) -> Any:
        return _as_transitions(v)


class RouteSpec(_Model):
    """The worker route of a task: ``service.role``; the shard and tenant come from the run."""

    service: str
    role: str

    @model_validator(mode="after")
    def _valid(self) -> RouteSpec:
        Route(self.service, self.role)  # raises ContractError with the reason
        return self


class AgentSpec(_Model):
    """The ``__assignment`` a task's assignments carry (agent, model, version, budget, TTL)."""

    agent_id: str
    version: str = "1"
    model: str = "cogo-local"
    budget: Budget = Field(default_factory=Budget)
    ttl_ms: int = Field(default=60_000, gt=0)

    def assignment(self) -> Assignment:
        """The wire assignment."""
        return Assignment(agent_id=self.agent_id, version=self.version, model=self.model,
                          budget=self.budget, ttl_ms=self.ttl_ms)


class TaskNode(_Node):
    """Publish an assignment to a worker route and wait for its outcome."""

    kind: Literal["task"]
    route: RouteSpec
    agent: AgentSpec
    input: Any = Field(default_factory=dict)
    output: str | None = None
    retry: RetryPolicy = NO_RETRY
    on_failure: str | None = None


class SuccessRate(_Model):
    """A phase gate's threshold (seed 004's PhaseGatePolicy): ``value`` must be ≥ ``threshold``."""

    value: str
    threshold: float = Field(ge=0.0, le=1.0)


class GateNode(_Node):
    """An assertion on the context: ``on_pass`` when it holds, ``on_fail`` otherwise."""

    kind: Literal["gate"]
    condition: str | None = Field(default=None, alias="assert")
    success_rate: SuccessRate | None = None
    on_pass: str = Field(alias="pass")
    on_fail: str = Field(alias="fail")

    @model_validator(mode="after")
    def _one_check(self) -> GateNode:
        if (self.condition is None) == (self.success_rate is None):
            raise ValueError("a gate needs exactly one of 'assert' or 'success_rate'")
        for expr in (self.condition, self.success_rate.value if self.success_rate else None):
            if expr:
                compile_expression(expr)
        return self


class ApprovalNode(_Node):
    """A person approves (``on_approve``) or rejects (``on_reject``); on timeout, ``on_timeout``."""

    kind: Literal["approval"]
    prompt: str = "Approve?"
    on_approve: str = Field(alias="approve")
    on_reject: str = Field(alias="reject")
    on_timeout: str = "fail"
    """A node id to route to (escalation), or ``fail`` to fail the run."""


class NotifyNode(_Node):
    """Publish a message on a Redis channel (and record it), then go on."""

    kind: Literal["notify"]
    channel: str = "cogo:notify"
    message: Any = Field(default_factory=dict)


class ParallelNode(_Node):
    """Static fan-out: one branch per listed start node, each in its own scope, merged at ``join``."""

    kind: Literal["parallel"]
    branches: list[str] = Field(min_length=1)
    join: str


class ForeachNode(_Node):
    """Dynamic fan-out: one branch per item of ``items`` (a JMESPath list), merged at ``join``."""

    kind: Literal["foreach"]
    items: str
    body: str
    join: str
    max_items: int = Field(default=10_000, ge=0)
    item_as: str | None = Field(default=None, alias="as", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    """Also store each item under this name, so nested fan-outs can still reach the outer item."""


class JoinNode(_Node):
    """Fan-in: fires once when ``any``, ``all`` or ``m`` of ``n`` branches have arrived."""

    kind: Literal["join"]
    mode: Literal["any", "all", "m_of_n"] = "all"
    m: int | None = Field(default=None, ge=1)
    output: str | None = None

    @model_validator(mode="after")
    def _m(self) -> JoinNode:
        if (self.mode == "m_of_n") != (self.m is not None):
            raise ValueError("'m' is required for mode m_of_n and only for it")
        return self


class SubworkflowNode(_Node):
    """Start a child run of ``workflow`` and wait for it; mappings move data in and out."""

    kind: Literal["subworkflow"]
    workflow: str
    version: int | None = None
    input_mapping: Any = Field(default_factory=dict)
    output_mapping: Any = None
    output: str | None = None
    on_failure: str | None = None


class WaitNode(_Node):
    """A durable timer (``duration_ms``) or a named external event (``event``)."""

    kind: Literal["wait"]
    duration_ms: int | None = Field(default=None, ge=0)
    event: str | None = None
    output: str | None = None

    @model_validator(mode="after")
    def _one(self) -> WaitNode:
        if (self.duration_ms is None) == (self.event is None):
            raise ValueError("a wait needs exactly one of 'duration_ms' or 'event'")
        return self


class EndNode(_Node):
    """The end of a path: the run completes (or fails, with ``status: failed``) with ``output``."""

    kind: Literal["end"]
    status: Literal["completed", "failed"] = "completed"
    output: Any = None
    code: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    """The stable error code of a ``failed`` end (default ``workflow.end_failed``)."""
    message: str | None = None
    """The error message of a ``failed`` end (plain text)."""

    @model_validator(mode="after")
    def _failure_only(self) -> EndNode:
        if self.status != "failed" and (self.code is not None or self.message is not None):
            raise ValueError("'code' and 'message' are for an end with status failed")
        return self


Node = Annotated[TaskNode | GateNode | ApprovalNode | NotifyNode | ParallelNode | ForeachNode | JoinNode
                 | SubworkflowNode | WaitNode | EndNode, Field(discriminator="kind")]


class WorkflowDefinition(_Model):
    """A workflow: named, versioned nodes from ``start``; loops bounded by ``max_loops``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,127}$")
    version: int = Field(default=1, ge=1)
    description: str = ""
    start: str
    max_loops: int = Field(default=DEFAULT_MAX_LOOPS, ge=0, le=1000)
    budget: Budget | None = None
    input: dict[str, Any] | None = None
    """The schema of the intent's payload (a JSON Schema subset, ``coordinator/inputs.py``); without one,
    any object is accepted."""
    nodes: dict[str, Node]

    @field_validator("input")
    @classmethod
    def _input_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            check_schema(v)
            if v.get("type", "object") != "object":
                raise ValueError(f"type: a payload is an object, so the schema's type must be 'object', "
                                 f"not {v['type']!r}")
        return v

    @property
    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema a payload of this workflow must match (any object when none is declared)."""
        return object_schema(self.input)

    @model_validator(mode="after")
    def _references(self) -> WorkflowDefinition:
        for node_id in self.nodes:
            if not _valid_id(node_id):
                raise ValueError(f"node id {node_id!r} must match {_NODE_ID}")
        if self.start not in self.nodes:
            raise ValueError(f"start node {self.start!r} is not defined")
        for node_id, node in self.nodes.items():
            for field_name, target in _targets(node):
                if target not in self.nodes:
                    raise ValueError(f"node {node_id!r} field {field_name!r} names unknown node {target!r}")
            join = getattr(node, "join", None)
            if join is not None and not isinstance(self.nodes[join], JoinNode):
                raise ValueError(f"node {node_id!r} field 'join' must name a join node, {join!r} is "
                                 f"a {self.nodes[join].kind}")
        return self

    def node(self, node_id: str) -> Node:
        """The node called ``node_id``."""
        return self.nodes[node_id]


def _valid_id(node_id: str) -> bool:
    import re
    return re.match(_NODE_ID, node_id) is not None


def _targets(node: Any) -> list[tuple[str, str]]:
    found = [("next", t.to) for t in node.next]
    for name in ("on_pass", "on_fail", "on_approve", "on_reject", "on_failure", "body", "join"):
        value = getattr(node, name, None)
        if value:
            found.append((name, value))
    if isinstance(node, ApprovalNode) and node.on_timeout != "fail":
        found.append(("on_timeout", node.on_timeout))
    if isinstance(node, ParallelNode):
        found.extend(("branches", b) for b in node.branches)
    return found


def parse_definition(raw: Any, *, source: str = "definition") -> WorkflowDefinition:
    """Validate a definition (a dict, as from YAML or JSON).

    A definition in seed 004's phase form (``coordinator/phases.py``) is compiled to its graph first.

    Raises:
        ContractError: code ``definition.invalid``; the message names the node and field (``phase.*`` for a
            phase-form definition whose phases and agent types do not fit).
    """
    if is_phase_form(raw):
        raw = compile_phases(raw, source=source)
    try:
        return WorkflowDefinition.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).endswith("Node") and p not in (
            "task", "gate", "approval", "notify", "parallel", "foreach", "join", "subworkflow", "wait", "end"))
        message = first["msg"].removeprefix("Value error, ")
        raise ContractError(f"{source}: {where + ': ' if where else ''}{message}", code="definition.invalid",
                            details={"field": where, "errors": [
                                {"field": ".".join(map(str, e["loc"])), "message": e["msg"]}
                                for e in exc.errors()]}) from None
    except ContractError as exc:
        raise ContractError(f"{source}: {exc}", code="definition.invalid") from None


def load_yaml(path: Path) -> WorkflowDefinition:
    """Read and validate one YAML definition file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ContractError(f"cannot read workflow definition {path}: {exc.strerror}",
                            code="definition.unreadable") from None
    except yaml.YAMLError as exc:
        raise ContractError(f"{path.name}: not valid YAML: {exc}", code="definition.invalid") from None
    return parse_definition(raw, source=path.name)


BUILTIN_DIR = Path(__file__).with_name("workflows")


class Registry:
    """Definitions by ``(name, version)``; the built-in ones are loaded from ``coordinator/workflows``."""

    def __init__(self, definitions: list[WorkflowDefinition] = ()):
        self._by_key: dict[tuple[str, int], WorkflowDefinition] = {}
        for d in definitions:
            self.add(d)

    @classmethod
    def builtin(cls) -> Registry:
        """The registry of every YAML file shipped with cogo."""
        return cls([load_yaml(p) for p in sorted(BUILTIN_DIR.glob("*.yaml"))])

    @classmethod
    def load(cls, extra_dir: Path | None = None) -> Registry:
        """The built-in definitions plus every ``*.yaml`` in ``extra_dir`` (the ``COGO_WORKFLOWS_DIR``)."""
        registry = cls.builtin()
        if extra_dir is not None and str(extra_dir) not in ("", "."):
            if not extra_dir.is_dir():
                raise ContractError(f"COGO_WORKFLOWS_DIR {extra_dir} is not a directory", code="config.invalid")
            for path in sorted(extra_dir.glob("*.yaml")):
                registry.add(load_yaml(path))
        return registry

    def add(self, definition: WorkflowDefinition) -> None:
        """Register a definition (replacing the same name and version)."""
        self._by_key[(definition.name, definition.version)] = definition

    def versions(self, name: str) -> tuple[int, ...]:
        """The registered versions of ``name``, oldest first (empty when unknown)."""
        return tuple(sorted(v for (n, v) in self._by_key if n == name))

    def catalog(self, definition: WorkflowDefinition) -> dict[str, tuple[int, ...]]:
        """The registered versions of every workflow that ``definition``'s subworkflow nodes start."""
        names = {n.workflow for n in definition.nodes.values() if isinstance(n, SubworkflowNode)}
        return {name: self.versions(name) for name in sorted(names)}

    def get(self, name: str, version: int | None = None) -> WorkflowDefinition:
        """A definition; without a version, the newest.

        Raises:
            NotFound: no such workflow or version.
        """
        if version is not None:
            found = self._by_key.get((name, version))
        else:
            versions = [v for (n, v) in self._by_key if n == name]
            found = self._by_key.get((name, max(versions))) if versions else None
        if found is None:
            raise NotFound(f"no workflow {name!r}" + (f" version {version}" if version else ""),
                           code="workflow.unknown")
        return found

    def names(self) -> list[str]:
        """Every registered workflow name."""
        return sorted({n for n, _ in self._by_key})
