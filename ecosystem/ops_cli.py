"""The operator's commands: runs, one run, approvals, approve, reject, cancel, the fleet's status, agents, intents."""

import json
import time
from typing import Annotated

import typer
from rich.text import Text

from ecosystem.cli_support import ApiKeyOption, ApiOption, UsageError, api_suffix, client_for, handled, out

ops = typer.Typer()
"""Registered into the ``cogo`` app at the top level (``cogo runs``, not ``cogo ops runs``)."""
RunStatus = typer.Option(help="Only runs in this status (pending, running, waiting, completed, failed, cancelled)")


@ops.command("runs")
@handled
def runs_(tenant: Annotated[str | None, typer.Option(help="Only this tenant's runs")] = None,
          status: Annotated[str | None, RunStatus] = None,
          intent: Annotated[str | None, typer.Option(help="Only runs of this intent")] = None,
          limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many runs")] = 20,
          api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """List recent runs, newest first, with when they started and how long they took."""
    from ecosystem import render

    with client_for(api, api_key) as client:
        found = client.runs(tenant=tenant, status=status, intent=intent, limit=limit)
    if not found:
        out.print("no runs match")
        return
    out.print(render.runs_table(found, now=time.time(), title=f"{render.plural(len(found), 'run')}, newest first"))


@ops.command("run")
@handled
def run_(run_id: Annotated[str, typer.Argument(help="The run's id")],
         api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Show one run: status, where it is (step, attempt), spend against budget, and what it waits for."""
    from ecosystem import render

    with client_for(api, api_key) as client:
        run, why = client.run(run_id), client.explain(run_id)
    out.print(render.run_detail(run, why, now=time.time(), hint_suffix=api_suffix(api)), soft_wrap=True)


@ops.command()
@handled
def approvals(tenant: Annotated[str | None, typer.Option(help="Only this tenant's approvals")] = None,
              api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """List the approvals waiting for a person, oldest first."""
    from ecosystem import render

    with client_for(api, api_key) as client:
        pending = client.approvals(tenant=tenant)
    if not pending:
        out.print("no approval is pending")
        return
    out.print(render.approvals_table(pending, now=time.time(), title=render.plural(len(pending), "pending approval")))
    out.print(Text.assemble(("approve: ", "dim"), f"cogo approve <approval>{api_suffix(api)}",
                            ("  ·  reject: ", "dim"), f"cogo reject <approval> --reason '…'{api_suffix(api)}"))


@ops.command()
@handled
def approve(approval_id: Annotated[str, typer.Argument(help="The approval's id (see cogo approvals)")],
            comment: Annotated[str, typer.Option(help="Why, for the record")] = "",
            api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Approve a pending approval; its run takes the approve route."""
    with client_for(api, api_key) as client:
        answer = client.approve(approval_id, comment=comment)
    out.print(f"approved {approval_id}: run {answer.get('run_id')} resumes "
              f"(cogo run {answer.get('run_id')}{api_suffix(api)})", soft_wrap=True)


@ops.command()
@handled
def reject(approval_id: Annotated[str, typer.Argument(help="The approval's id (see cogo approvals)")],
           reason: Annotated[str, typer.Option(help="Why it is rejected (required)")],
           api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Reject a pending approval with a reason; its run takes the reject route."""
    if not reason.strip():
        raise UsageError("--reason must say why the approval is rejected")
    with client_for(api, api_key) as client:
        answer = client.reject(approval_id, reason=reason)
    out.print(f"rejected {approval_id}: run {answer.get('run_id')} takes its reject route "
              f"(cogo run {answer.get('run_id')}{api_suffix(api)})", soft_wrap=True)


@ops.command()
@handled
def cancel(run_id: Annotated[str, typer.Argument(help="The run's id")],
           reason: Annotated[str, typer.Option(help="Why, for the record")] = "cancelled by an operator",
           api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Cancel a run and its children (the brain abandons their work)."""
    with client_for(api, api_key) as client:
        client.cancel(run_id, reason=reason)
    out.print(f"cancel of run {run_id} accepted: the brain cancels it and its children "
              f"(cogo run {run_id}{api_suffix(api)})", soft_wrap=True)


@ops.command()
@handled
def status(api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Show each process of the fleet (up or not, and how we know), each queue's depth and oldest message."""
    from ecosystem import render
    from ecosystem.processes import PROCESSES

    with client_for(api, api_key) as client:
        fleet = client.fleet()
        orchestrator = client.orchestrator_state()
    out.print(render.fleet_status(fleet, PROCESSES, now=time.time()))
    out.print(_circuits(orchestrator.get("circuits") or [], now=time.time()), soft_wrap=True)


def _circuits(circuits: list[dict], *, now: float) -> Text:
    """The circuit breakers: each one not closed, in words, and how many are closed."""
    from coordinator.timefmt import ago

    closed = sum(1 for c in circuits if c.get("state") == "closed")
    text = Text.assemble(("circuits ", "bold"), f"{closed} closed")
    for c in circuits:
        if c.get("state") == "closed":
            continue
        name = f"{c.get('service')}.{c.get('role')} / model {c.get('model')}"
        if c.get("state") == "half_open":
            text.append(f"\n  {name}: half-open, probe {c.get('probe_id')} running", style="bold yellow")
        else:
            text.append(f"\n  {name}: open since {ago(c.get('opened_at'), now=now)} after {c.get('reason')}; "
                        f"next probe {ago(c.get('retry_at'), now=now)}", style="bold red")
    return text


@ops.command()
@handled
def agents(api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Show every registered agent: its routes, idle, busy, stopped or gone, last heartbeat, capacity, version."""
    from rich import box
    from rich.table import Table

    from coordinator.timefmt import ago

    with client_for(api, api_key) as client:
        registry = client.agents()
    now, listed = time.time(), registry.get("agents") or []
    if not listed:
        out.print("no agent has registered (workers register when they start)")
    table = Table(title=f"{len(listed)} agent(s)", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for name in ("agent", "routes", "state", "running", "done", "last heartbeat", "capacity", "version", "models"):
        table.add_column(name, overflow="fold")
    styles = {"idle": "bold green", "busy": "bold yellow", "gone": "bold red", "stopped": "dim"}
    for a in listed:
        table.add_row(str(a["agent_id"]), ", ".join(a["routes"]), Text(a["state"], style=styles.get(a["state"], "")),
                      str(a["running"]), str(a["assignments_done"]), ago(a["heartbeat_at"], now=now),
                      str(a["capacity"]), f"{a['version']} (cogo {a['software']})", ", ".join(a["models"]) or "any")
    if listed:
        out.print(table)
    for r in registry.get("routes") or []:
        models = "any model" if r["models"] is None else "models " + ", ".join(r["models"])
        live = f"{r['live']} live, capacity {r['capacity']}, {models}" if r["live"] else "no live agent"
        seen = "never seen" if r["last_seen_at"] is None else f"last seen {ago(r['last_seen_at'], now=now)}"
        out.print(Text.assemble((f"{r['route']}: ", "bold"), f"{live}; {seen}"), soft_wrap=True)


@ops.command()
@handled
def intents(as_json: Annotated[bool, typer.Option("--json", help="Print the input schemas in full")] = False,
            api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """List the intents the fleet accepts: workflow, one-line description, payload fields."""
    from ecosystem import render

    with client_for(api, api_key) as client:
        found = client.intents()
    if as_json:
        out.print_json(json.dumps({"intents": found}, default=str))
        return
    out.print(render.intents_table(found))
