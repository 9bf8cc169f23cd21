"""Terminal views of the CLI: a run's result, its introspection trace, the fleet's summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from ecosystem.launcher import Fleet, redact

STATUS_STYLES = {"completed": "bold green", "failed": "bold red", "cancelled": "bold yellow"}


def summarize(data: Mapping[str, Any] | None, width: int = 96) -> str:
    """A one-line ``key=value`` digest of an event's data, cut to ``width`` characters."""
    parts = []
    for key, value in (data or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
        parts.append(f"{key}={_cut(text, 40)}")
    return _cut(" ".join(parts), width)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def events_table(events: Sequence[Mapping[str, Any]], *, title: str = "") -> Table:
    """The trace as a table: id, ms since the first event, type, node, token, a digest of the data."""
    table = Table(title=title or None, title_justify="left", header_style="bold", expand=False,
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", justify="right", style="dim", no_wrap=True)
    table.add_column("+ms", justify="right", no_wrap=True)
    table.add_column("type", style="cyan", no_wrap=True)
    table.add_column("node", no_wrap=True, max_width=20, overflow="ellipsis")
    table.add_column("token", style="dim", no_wrap=True, max_width=10, overflow="ellipsis")
    table.add_column("data", min_width=24, overflow="fold")
    start = events[0].get("created_at") if events else None
    for event in events:
        at = event.get("created_at")
        offset = f"{(at - start) * 1000:.1f}" if isinstance(at, int | float) and start is not None else ""
        table.add_row(str(event.get("id", "")), offset, str(event.get("type", "")),
                      event.get("node_id") or "", _short(event.get("token_id")), summarize(event.get("data")))
    return table


def _short(token: str | None) -> str:
    return "" if not token else _cut(str(token), 10)


def run_result(run: Mapping[str, Any]) -> RenderableType:
    """A run's outcome: status and duration, then its output (or its error)."""
    status = str(run.get("status", "?"))
    head = Text.assemble(("run ", ""), (str(run.get("id", "")), "bold"), (" ", ""),
                         (status, STATUS_STYLES.get(status, "bold")))
    created, ended = run.get("created_at"), run.get("ended_at")
    if isinstance(created, int | float) and isinstance(ended, int | float):
        head.append(f" in {ended - created:.2f}s")
    if run.get("workflow"):
        head.append(f" · workflow {run['workflow']}", style="dim")
    parts: list[RenderableType] = [head]
    if run.get("error"):
        parts += [Text("error:", style="red"), _json(run["error"])]
    if run.get("output") is not None:
        parts += [Text("output:", style="bold"), _json(run["output"])]
    return Group(*parts)


def _json(value: Any) -> RenderableType:
    try:
        return JSON(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return Text(repr(value))


def fleet_summary(fleet: Fleet) -> RenderableType:
    """Where everything of a healthy fleet is."""
    names = {p.name for p in fleet.selected}
    settings = fleet.settings
    rows = []
    if "orchestrator-chat" in names:
        rows.append(("API", fleet.api_url))
    if "flower" in names:
        rows.append(("Flower", fleet.flower_url))
    if "cogo-metrics-server" in names:
        rows.append(("Metrics", fleet.metrics_url + "/metrics"))
    rows += [("Ledger", redact(settings.database_url)),
             ("Broker", redact(settings.broker_url) + (" (embedded)" if fleet.broker else "")),
             ("Logs", str(settings.home / "logs"))]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    title = Text(f"cogo is up: {len(fleet.children)} processes healthy", style="bold green")
    return Group(title, table)

