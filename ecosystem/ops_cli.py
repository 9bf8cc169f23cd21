"""The operator's commands: runs, one run, approvals, approve, reject, cancel, the fleet's status, intents."""

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
    out.print(render.fleet_status(fleet, PROCESSES, now=time.time()))


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
