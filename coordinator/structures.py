"""Phase 1 for the run's open structures: branch scopes, fan-ins, approvals and child runs.

Each applier records what to write and the ``operation.*`` event that says it was done; ``flush`` runs
the writes after the run's version check, as few statements as it can. The in-memory mirror of these
appliers is ``coordinator.planning.working``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, insert, update

from bus.envelope import Intent
from bus.errors import Conflict
from coordinator import decisions as d
from coordinator.schema import approvals, branch_scopes, fan_ins
from coordinator.state import WAITING, WorkflowState


class StructureWrites:
    """What one step changes in ``branch_scopes``, ``fan_ins``, ``approvals`` and child ``runs``."""

    def __init__(self, state: WorkflowState):
        self.scopes: dict[str, dict[str, Any]] = dict(state.scopes)
        self.new_scopes: dict[str, dict[str, Any]] = {}
        """Scopes created in this step: ``{fan_id, branch_index, data}`` each."""
        self.dirty_scopes: set[str] = set()
        self.dropped_scopes: list[str] = []
        self.fans = {f.fan_id: {"arrived": list(f.arrived), "fired": f.fired} for f in state.fan_ins.values()}
        self.new_fans: dict[str, dict[str, Any]] = {}
        self.changed_fans: set[str] = set()
        self.closed_fans: list[str] = []
        self.new_approvals: list[dict[str, Any]] = []
        self.resolved_approvals: list[tuple[str, dict[str, Any]]] = []
        self.children: list[d.StartSubworkflow] = []

    def write_scope(self, scope: str, key: str, value: Any) -> None:
        """``scope[key] = value`` in a branch scope (new in this step or loaded)."""
        created = self.new_scopes.get(scope)
        if created is not None:
            created["data"][key] = value
            return
        self.scopes[scope] = {**self.scopes.get(scope, {}), key: value}
        self.dirty_scopes.add(scope)

    def flush(self, p: Any) -> None:
        """Write everything, in the caller's transaction (after the run's version check)."""
        conn, now, run_id = p.conn, p.now, p.run.id
        if self.new_fans:
            conn.execute(insert(fan_ins), [{"run_id": run_id, "fan_id": f, "created_at": now, "updated_at": now, **v}
                                           for f, v in self.new_fans.items()])
        for fan_id in sorted(self.changed_fans):
            values = self.fans[fan_id]
            stmt = (update(fan_ins).where(fan_ins.c.run_id == run_id, fan_ins.c.fan_id == fan_id,
                                          fan_ins.c.fired.is_(False)).values(updated_at=now, **values))
            if conn.execute(stmt).rowcount != 1:
                raise Conflict(f"join {fan_id} of run {run_id} already fired")
        if self.closed_fans:
            conn.execute(delete(fan_ins).where(fan_ins.c.run_id == run_id, fan_ins.c.fan_id.in_(self.closed_fans)))
        self._flush_scopes(p)
        if self.new_approvals:
            conn.execute(insert(approvals), self.new_approvals)
        for approval_id, values in self.resolved_approvals:
            conn.execute(update(approvals).where(approvals.c.id == approval_id, approvals.c.status == "pending")
                         .values(**values))
        self._start_children(p)

    def _flush_scopes(self, p: Any) -> None:
        if self.new_scopes:
            p.conn.execute(insert(branch_scopes), [{"id": s, "run_id": p.run.id, "created_at": p.now, **row}
                                                   for s, row in self.new_scopes.items()])
        for scope in sorted(self.dirty_scopes):
            p.conn.execute(update(branch_scopes).where(branch_scopes.c.id == scope).values(data=self.scopes[scope]))
        if self.dropped_scopes:
            p.conn.execute(delete(branch_scopes).where(branch_scopes.c.id.in_(self.dropped_scopes)))

    def _start_children(self, p: Any) -> None:
        from coordinator.intents import create_run

        for x in self.children:
            definition = p.registry.get(x.workflow, x.version)
            parent = {"run_id": p.run.id, "token_id": x.token_id, "root_run_id": p.run.root_run_id or p.run.id,
                      "depth": p.run.depth + 1}
            _, delivery = create_run(p.conn, Intent(tenant=p.run.tenant, intent=x.workflow, payload=x.input),
                                     definition, now=p.now, shards=p.shards, run_id=x.child_run_id, parent=parent)
            p.effects.deliveries.append(delivery)


# -- one applier per decision type --------------------------------------------------------------------
def _init_branch(p: Any, x: d.InitBranchTable) -> None:
    s: StructureWrites = p.structures
    s.new_scopes[x.scope] = {"fan_id": x.fan_id, "branch_index": x.branch_index, "data": dict(x.data)}
    p.op("operation.context.branch_table.create", node_id=None, scope=x.scope, fan_id=x.fan_id,
         branch_index=x.branch_index)


def _branch_output(p: Any, x: d.ApplyBranchOutput) -> None:
    p.structures.write_scope(x.scope, x.key, x.value)
    p.op("operation.context.write", x.token_id, key=x.key, scope=x.scope)


def _merge(p: Any, x: d.MergeBranches) -> None:
    p.op("operation.context.merge.start", fan_id=x.fan_id, key=x.key, branches=len(x.branches), into=x.scope)
    p.write(x.scope, x.key, list(x.rows))
    p.op("operation.context.merge.complete", fan_id=x.fan_id, key=x.key, rows=len(x.rows),
         keys=sum(len(r) for r in x.rows if isinstance(r, dict)))


def _drop(p: Any, x: d.DropBranchTables) -> None:
    s: StructureWrites = p.structures
    prefixes = tuple(f"{scope}/" for scope in x.scopes)
    for key in [k for k in p.visits if k.startswith(prefixes)]:
        del p.visits[key]  # a dropped branch's loop counters would otherwise grow the run row forever
    for scope in x.scopes:
        if s.new_scopes.pop(scope, None) is None:  # one created in this same step never reaches the table
            s.dropped_scopes.append(scope)
        s.scopes.pop(scope, None)
        s.dirty_scopes.discard(scope)
        p.op("operation.context.branch_table.drop", scope=scope, fan_id=x.fan_id, reason=x.reason)


def _open_fan(p: Any, x: d.OpenFanIn) -> None:
    s: StructureWrites = p.structures
    s.fans[x.fan_id] = {"arrived": [], "fired": False}
    s.new_fans[x.fan_id] = {"join_node": x.join_node, "expected": x.expected, **s.fans[x.fan_id]}
    p.op("operation.fan_in.open", x.owner_token_id, fan_id=x.fan_id, join=x.join_node, expected=x.expected)


def _fan_change(p: Any, fan_id: str, **values: Any) -> None:
    s: StructureWrites = p.structures
    fan = s.fans[fan_id]
    fan.update(values)
    if fan_id in s.new_fans:
        s.new_fans[fan_id].update(values)
    else:
        s.changed_fans.add(fan_id)


def _arrive(p: Any, x: d.RecordArrival) -> None:
    arrived = [*p.structures.fans[x.fan_id]["arrived"], x.branch_index]
    _fan_change(p, x.fan_id, arrived=arrived)
    p.op("operation.fan_in.arrive", x.token_id, fan_id=x.fan_id, branch_index=x.branch_index, arrived=len(arrived))


def _fire(p: Any, x: d.FireJoin) -> None:
    _fan_change(p, x.fan_id, fired=True)
    p.op("operation.fan_in.fire", node_id=x.join_node, fan_id=x.fan_id,
         arrived=len(p.structures.fans[x.fan_id]["arrived"]))


def _close_fan(p: Any, x: d.CloseFanIn) -> None:
    s: StructureWrites = p.structures
    if s.new_fans.pop(x.fan_id, None) is None:
        s.closed_fans.append(x.fan_id)
        s.changed_fans.discard(x.fan_id)
    p.op("operation.fan_in.close", fan_id=x.fan_id, reason=x.reason)


def _start_child(p: Any, x: d.StartSubworkflow) -> None:
    p.structures.children.append(x)
    p.token_update(x.token_id, status=WAITING, child_run_id=x.child_run_id)
    p.op("operation.subworkflow.create", x.token_id, child_run_id=x.child_run_id, workflow=x.workflow,
         version=x.version)


def _request_approval(p: Any, x: d.RequestApproval) -> None:
    p.structures.new_approvals.append({
        "id": x.approval_id, "run_id": p.run.id, "token_id": x.token_id, "node_id": x.node_id,
        "tenant": p.run.tenant, "status": "pending", "prompt": x.prompt, "requested_at": p.now,
        "expires_at": x.expires_at})
    p.op("operation.approval.create", x.token_id, x.node_id, approval_id=x.approval_id, expires_at=x.expires_at)


def _resolve_approval(p: Any, x: d.ResolveApproval) -> None:
    p.structures.resolved_approvals.append((x.approval_id, {"status": x.status, "decided_at": p.now,
                                                            "decided_by": x.by, "comment": x.comment}))
    p.op("operation.approval.resolve", approval_id=x.approval_id, status=x.status, by=x.by)


STRUCTURE_APPLIERS: dict[type, Callable[[Any, Any], None]] = {
    d.InitBranchTable: _init_branch,
    d.ApplyBranchOutput: _branch_output,
    d.MergeBranches: _merge,
    d.DropBranchTables: _drop,
    d.OpenFanIn: _open_fan,
    d.RecordArrival: _arrive,
    d.FireJoin: _fire,
    d.CloseFanIn: _close_fan,
    d.StartSubworkflow: _start_child,
    d.RequestApproval: _request_approval,
    d.ResolveApproval: _resolve_approval,
}
