"""Sub-workflows (seed 000, phase 7): a child run with ``parent_run_id``; its end comes back as an event.

The child's input is the node's ``input_mapping`` rendered over the parent's view; its output comes back
through ``output_mapping`` (a mapping whose keys are set in the token's scope, with the child's output as
``output``), or whole under ``output`` (default: the node id). A child's failure is the token's failure.
"""

from __future__ import annotations

from bus.errors import Problem
from coordinator import decisions as d
from coordinator import events as ev
from coordinator.definitions import SubworkflowNode
from coordinator.expressions import render
from coordinator.planning.builder import PlanBuilder
from coordinator.planning.transitions import (
    FAILED_EXPRESSION,
    advance,
    computed,
    enter,
    entry_rule,
    fail_workflow,
    finish_token,
    write_output,
)
from coordinator.state import FAILED, WAITING, Token

MAX_DEPTH = 32
"""How deep runs may nest: a workflow that starts itself ends with ``subworkflow.too_deep``, not forever."""


def resolve_version(b: PlanBuilder, node: SubworkflowNode) -> int | None:
    """The child definition's version: the pinned one if registered, else the newest; None if unknown."""
    versions = b.state.catalog.get(node.workflow, ())
    if node.version is not None:
        return node.version if node.version in versions else None
    return max(versions) if versions else None


@entry_rule("subworkflow")
def _enter_subworkflow(b: PlanBuilder, token: Token, node: SubworkflowNode) -> None:
    version = resolve_version(b, node)
    if version is None:
        named = f"no workflow {node.workflow!r}" + (f" version {node.version}" if node.version else "")
        fail_workflow(b, Problem("subworkflow.unknown", named, details={"node": token.node_id}))
        return
    if b.run.depth + 1 > MAX_DEPTH:
        fail_workflow(b, Problem("subworkflow.too_deep", f"runs may nest at most {MAX_DEPTH} deep",
                                 details={"node": token.node_id}))
        return
    payload = computed(b, token, render, node.input_mapping, b.scope_view(token))
    if payload is FAILED_EXPRESSION:
        return
    if not isinstance(payload, dict):
        fail_workflow(b, Problem("subworkflow.input_not_object",
                                 f"input_mapping gave {type(payload).__name__}, not an object",
                                 details={"node": token.node_id}))
        return
    child_run_id = b.derived_id(token.id, "child")
    b.emit("decision.subworkflow.start", token=token, workflow=node.workflow, version=version,
           child_run_id=child_run_id, depth=b.run.depth + 1, input_keys=sorted(payload))
    b.decide(d.MarkWaiting(token.id, {"kind": "child", "child_run_id": child_run_id, "workflow": node.workflow}))
    b.decide(d.StartSubworkflow(token.id, child_run_id, node.workflow, version, payload))
    if node.timeout_ms:
        b.decide(d.ScheduleAlarm(token.id, b.now + node.timeout_ms / 1000, "timeout",
                                 b.derived_id(token.id, "timeout")))


def _waiting_child(b: PlanBuilder, event: ev.ChildCompleted | ev.ChildFailed) -> Token | None:
    token = b.tokens.get(event.token_id)
    if token is None or token.status != WAITING or token.child_run_id != event.child_run_id:
        b.emit("decision.event.ignored", kind=event.kind, token_id=event.token_id, child_run_id=event.child_run_id,
               reason="no token waits for this child run any more")
        return None
    return token


def on_child_completed(b: PlanBuilder, event: ev.ChildCompleted) -> None:
    """Map the child's output into the token's scope and go on."""
    token = _waiting_child(b, event)
    if token is None:
        return
    node: SubworkflowNode = b.definition.node(token.node_id)
    b.emit("decision.subworkflow.completed", token=token, child_run_id=event.child_run_id,
           mapping="output_mapping" if node.output_mapping is not None else (node.output or token.node_id))
    if node.output_mapping is None:
        finish_token(b, token, output=event.output, key=node.output or token.node_id)
    else:
        mapped = computed(b, token, render, node.output_mapping, b.scope_view(token, output=event.output))
        if mapped is FAILED_EXPRESSION:
            return
        if not isinstance(mapped, dict):
            fail_workflow(b, Problem("subworkflow.output_not_object",
                                     f"output_mapping gave {type(mapped).__name__}, not an object",
                                     details={"node": token.node_id}))
            return
        finish_token(b, token, output=event.output)
        for key, value in mapped.items():
            write_output(b, token, key, value)
    advance(b, token, node.next, output=event.output)


def on_child_failed(b: PlanBuilder, event: ev.ChildFailed) -> None:
    """The child failed or was cancelled: the node's ``on_failure``, or the run's failure plan."""
    token = _waiting_child(b, event)
    if token is None:
        return
    node: SubworkflowNode = b.definition.node(token.node_id)
    error = Problem("subworkflow.failed",
                    f"child run {event.child_run_id} failed: {event.error.message or event.error.code}",
                    details={"node": token.node_id, "child_run_id": event.child_run_id,
                             "child_error": event.error.to_dict()})
    b.emit("decision.subworkflow.failed", token=token, child_run_id=event.child_run_id, error=event.error.to_dict(),
           to=node.on_failure, reason="the child run failed or was cancelled")
    b.decide(d.UpdateTokenStatus(token.id, FAILED, error=error))
    if node.on_failure:
        enter(b, node.on_failure, scope=token.scope, fan_id=token.fan_id, branch_index=token.branch_index)
    else:
        fail_workflow(b, error)
