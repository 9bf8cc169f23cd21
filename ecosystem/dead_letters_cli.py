"""``cogo dead-letters``: list, show, re-queue and discard the assignments held as dead letters, through the API
(``docs/dead-letters.md``)."""

import json
import time
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ecosystem.cli_support import ApiKeyOption, ApiOption, UsageError, api_suffix, client_for, handled, out

dead_letters_app = typer.Typer(name="dead-letters", no_args_is_help=True,
                               help="Assignments held as dead letters: list, show, requeue, discard.")
STATES = ("held", "requeued", "discarded", "all")


@dead_letters_app.command("list")
@handled
def list_(tenant: Annotated[str | None, typer.Option(help="Only this tenant's letters (admin keys)")] = None,
          state: Annotated[str, typer.Option(help=f"Which letters: {', '.join(STATES)}")] = "held",
          limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many")] = 100,
          api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """List dead letters, oldest first: the ones held now, by default."""
    from coordinator.timefmt import ago

    if state not in STATES:
        raise UsageError(f"--state must be one of {', '.join(STATES)}, got {state!r}")
    with client_for(api, api_key) as client:
        found = client.dead_letters(tenant=tenant, state=state, limit=limit)
    if not found:
        out.print("no dead letter is held" if state == "held" else f"no {state} dead letter")
        return
    now = time.time()
    table = Table("id", "tenant", "run", "route", "state", "attempts", "last error", "since", box=box.SIMPLE,
                  header_style="bold")
    for d in found:
        table.add_row(d["id"], d["tenant"], d["run_id"] or "", d["route"], d["dead_letter"], str(d["attempts"]),
                      d["last_error"] or "", ago(d["updated_at"], now=now))
    out.print(table)
    out.print(Text.assemble(("re-queue: ", "dim"), f"cogo dead-letters requeue <id>{api_suffix(api)}",
                            ("  ·  discard: ", "dim"), f"cogo dead-letters discard <id>{api_suffix(api)}"))


@dead_letters_app.command("show")
@handled
def show(letter_id: Annotated[str, typer.Argument(help="The assignment's id (see cogo dead-letters list)")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the whole answer as JSON")] = False,
         api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Show one dead letter and its whole history: every audit row and trace event about it, in order."""
    from coordinator.timefmt import iso

    with client_for(api, api_key) as client:
        d = client.dead_letter(letter_id)
    if as_json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return
    out.print(f"dead letter {d['id']} ({d['dead_letter']}, status {d['status']}) of run {d['run_id']}, "
              f"node {d['node_id']}, route {d['route']}, tenant {d['tenant']}", soft_wrap=True)
    out.print(f"attempts {d['attempts']} of {d['max_attempts']}; last error: {d['last_error']}; "
              f"usage {d['usage']['tokens']} tokens / ${d['usage']['cost_usd']:.6f}", soft_wrap=True)
    table = Table("at", "what", "attempt", "detail", box=box.SIMPLE, header_style="bold")
    for row in d["history"]:
        table.add_row(iso(row["created_at"]), row["kind"], str(row["attempt"]),
                      json.dumps(row["detail"], sort_keys=True) if row["detail"] else "")
    out.print(table)
    for e in d["events"]:
        out.print(Text.assemble((f"{iso(e['created_at'])} ", "dim"), e["type"]), soft_wrap=True)


@dead_letters_app.command("requeue")
@handled
def requeue(letter_id: Annotated[str, typer.Argument(help="The assignment's id (see cogo dead-letters list)")],
            max_cost_usd: Annotated[float | None, typer.Option(help="A new budget: dollars")] = None,
            max_tokens: Annotated[int | None, typer.Option(help="A new budget: tokens")] = None,
            api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Re-queue a held dead letter with a new set of attempts (and a new budget: give both limits)."""
    if (max_cost_usd is None) != (max_tokens is None):
        raise UsageError("a new budget needs both --max-cost-usd and --max-tokens")
    budget = None if max_cost_usd is None else {"maxCostUsd": max_cost_usd, "maxTokens": max_tokens}
    with client_for(api, api_key) as client:
        answer = client.requeue_dead_letter(letter_id, budget=budget)
    with_budget = "" if budget is None else f" with a budget of ${max_cost_usd:g} / {max_tokens} tokens"
    out.print(f"re-queued {letter_id}{with_budget}: run {answer.get('run_id')} goes on "
              f"(cogo run {answer.get('run_id')}{api_suffix(api)})", soft_wrap=True)


@dead_letters_app.command("discard")
@handled
def discard(letter_id: Annotated[str, typer.Argument(help="The assignment's id (see cogo dead-letters list)")],
            reason: Annotated[str, typer.Option(help="Why, for the record")] = "",
            api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Discard a held dead letter: its run is told the failure it recorded and goes on to its failure handling."""
    with client_for(api, api_key) as client:
        answer = client.discard_dead_letter(letter_id, reason=reason)
    out.print(f"discarded {letter_id}: run {answer.get('run_id')} is told its failure "
              f"(cogo run {answer.get('run_id')}{api_suffix(api)})", soft_wrap=True)
