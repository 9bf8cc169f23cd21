"""Terminal views of the CLI: a run's result, its introspection trace, the fleet's summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from rich import box
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from coordinator.keys import ADMIN_KEY_FILE
from coordinator.timefmt import ago, duration, iso
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


def dashboard_url(fleet: Fleet, key: str | None = None) -> str:
    """The dashboard's URL; with ``key`` in its fragment it signs a browser in (a fragment never reaches a server)."""
    url = f"{fleet.api_url}/ui/"
    return f"{url}#key={quote(key, safe='')}" if key else url


def dashboard_link(fleet: Fleet) -> Text | None:
    """The dashboard's URL with the admin key in its fragment, to open from a terminal (like Jupyter's token URL);
    None without an API or a key."""
    key = getattr(fleet, "api_key", None)
    if not key or "orchestrator-chat" not in {p.name for p in fleet.selected}:
        return None
    return Text.assemble(("open:  ", "bold"), dashboard_url(fleet, key), ("  (signs you in as admin)", "dim"))


def fleet_summary(fleet: Fleet) -> RenderableType:
    """Where everything of a healthy fleet is."""
    names = {p.name for p in fleet.selected}
    settings = fleet.settings
    rows = []
    key_file = settings.home / ADMIN_KEY_FILE
    if "orchestrator-chat" in names:
        rows.append(("API", fleet.api_url))
        rows.append(("Dashboard", f"{dashboard_url(fleet)}  (sign in with the key in {key_file})"))
    if "flower" in names:
        auth = getattr(fleet, "flower_auth", None)
        login = f"  (user {auth[0]}; its password is printed above)" if isinstance(auth, tuple) else ""
        rows.append(("Flower", fleet.flower_url + login))
    if "cogo-metrics-server" in names:
        rows.append(("Metrics", fleet.metrics_url + "/metrics"))
    rows += [("Ledger", redact(settings.database_url)),
             ("Broker", redact(settings.broker_url) + (" (embedded)" if fleet.broker else "")),
             ("Logs", str(settings.home / "logs"))]
    if getattr(fleet, "api_key", None) or key_file.exists():
        rows.append(("API key", f"in {key_file} (the cogo CLI reads it from there; or set COGO_API_KEY)"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    title = Text(f"cogo is up: {len(fleet.children)} processes healthy", style="bold green")
    return Group(title, table)



# -- the operator's views: runs, one run, approvals, the fleet, intents -------------------------------------
def _table(title: str = "") -> Table:
    return Table(title=title or None, title_justify="left", header_style="bold", expand=False,
                 box=box.SIMPLE_HEAD, pad_edge=False)


def _styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, "bold" if status in ("running", "waiting") else ""))


def took(run: Mapping[str, Any], *, now: float) -> str:
    """How long a run took (``12.4 s``), or how long it has run so far (``running 3 min 5 s``)."""
    created, ended = run.get("created_at"), run.get("ended_at")
    if not isinstance(created, int | float):
        return "-"
    if isinstance(ended, int | float):
        return duration(ended - created)
    return f"{duration(now - created)} so far"


def runs_table(runs: Sequence[Mapping[str, Any]], *, now: float, title: str = "") -> Table:
    """Runs newest first: id, intent, tenant, status, when it started (relative) and how long it took."""
    table = _table(title)
    for name, justify in (("run", "left"), ("intent", "left"), ("tenant", "left"), ("status", "left"),
                          ("started", "right"), ("took", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    ordered = sorted(runs, key=lambda r: r.get("created_at") or 0.0, reverse=True)
    for run in ordered:
        table.add_row(str(run.get("id", "")), str(run.get("intent", "")), str(run.get("tenant", "")),
                      _styled(str(run.get("status", ""))), ago(run.get("created_at"), now=now), took(run, now=now))
    return table


def spend(run: Mapping[str, Any]) -> str:
    """Spend against budget: ``1,840 / 2,000 tokens · $0.0123 / $1.0000`` (``no budget`` when none)."""
    budget = run.get("budget") or {}
    tokens, cost = int(run.get("spent_tokens") or 0), float(run.get("spent_cost_usd") or 0.0)
    max_tokens, max_cost = budget.get("maxTokens"), budget.get("maxCostUsd")
    token_text = f"{tokens:,} / {int(max_tokens):,} tokens" if max_tokens is not None else f"{tokens:,} tokens"
    cost_text = f"${cost:,.4f} / ${float(max_cost):,.4f}" if max_cost is not None else f"${cost:,.4f}"
    return f"{token_text} · {cost_text}" + ("" if budget else " (no budget)")


def flatten(items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every ``waiting_for`` item of ``explain``, with the branches under a join in order after it."""
    found: list[Mapping[str, Any]] = []
    for item in items:
        found.append(item)
        for branch in item.get("missing") or []:
            found.extend(flatten(branch.get("waiting_for") or []))
    return found


def position(why: Mapping[str, Any]) -> str:
    """Where the run is, in words: ``step build-test, attempt 2 of 3``; approvals first (a person acts)."""
    items = flatten(why.get("waiting_for") or [])
    approvals = [i for i in items if i.get("kind") == "approval"]
    if approvals:
        return "; ".join(f"step {i.get('node_id')} waits for a person (approval {i.get('approval_id')})"
                         for i in approvals)
    parts = []
    for item in items:
        state = _TASK_STATES.get(item.get("assignment_status"), item.get("assignment_status"))
        if item.get("kind") == "task" and item.get("attempt"):
            parts.append(f"step {item.get('node_id')}, attempt {item['attempt']} of {item.get('max_attempts')}"
                         f" ({state})")
        elif item.get("kind") == "task":
            parts.append(f"step {item.get('node_id')}, first attempt {state or 'not dispatched yet'}")
        elif item.get("kind") != "join":
            parts.append(f"step {item.get('node_id')} ({item.get('kind')})")
    return "; ".join(parts) or str(why.get("status", ""))


_TASK_STATES = {"queued": "waiting for admission", "dispatched": "waiting for a worker", "running": "running",
                "retry_wait": "backing off before a retry", "done": "finished; the run moves on",
                "failed": "failed; the run moves on", "dead": "abandoned"}


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def describe(item: Mapping[str, Any], *, now: float, hint_suffix: str = "") -> str:
    """One ``explain`` item in words with relative times (``pending since 2 min ago``)."""
    kind, node = item.get("kind"), item.get("node_id")
    since = ago(item.get("since"), now=now)
    if kind == "approval":
        due = f", answer due {ago(item.get('expires_at'), now=now)}" if item.get("expires_at") else ""
        prompt = f" ({item['prompt']!r})" if item.get("prompt") else ""
        return (f"{node}: waits for a person{prompt}: approval {item.get('approval_id')} "
                f"{item.get('approval_status', 'pending')} since {ago(item.get('requested_at'), now=now)}{due} — "
                f"approve with `cogo approve {item.get('approval_id')}{hint_suffix}`")
    if kind == "task" and item.get("assignment_status"):
        head = f"{node}: attempt {item.get('attempt')} of {item.get('max_attempts')} on {item.get('route')}"
        status = item["assignment_status"]
        if item.get("dead_letter") == "held" or item.get("deferred"):
            return item["summary"]  # a dead letter, or what admission waits for: said whole by explain
        if status == "retry_wait":
            return f"{head} failed ({item.get('last_error')}); next attempt {ago(item.get('retry_at'), now=now)}"
        if status == "running":
            return f"{head} running since {since} (lease ends {ago(item.get('lease_until'), now=now)})"
        return f"{head} {_TASK_STATES.get(status, status)} since {since}"
    if kind == "timer":
        return f"{node}: waits for a timer that fires {ago(item.get('fire_at'), now=now)}"
    if kind == "event":
        return f"{node}: waits since {since} for the external signal {item.get('event')!r}"
    if kind == "child":
        return f"{node}: waits since {since} for child run {item.get('child_run_id')} ({item.get('child_status')})"
    if kind == "join":
        missing = [b.get("branch_index") for b in item.get("missing") or []]
        return (f"join {item.get('join')!r}: {item.get('arrived')} of {item.get('expected')} branches arrived "
                f"since {since}; waiting for branches {missing}")
    return str(item.get("summary") or f"{node}: {item.get('status')} since {since}")


def run_detail(run: Mapping[str, Any], why: Mapping[str, Any], *, now: float, hint_suffix: str = "") -> RenderableType:
    """One run for a person: status, workflow, times, where it is, spend against budget, explain in words."""
    status = str(run.get("status", "?"))
    head = Text.assemble("run ", (str(run.get("id", "")), "bold"), " ", _styled(status))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("workflow", f"{run.get('workflow')} v{run.get('workflow_version')} · intent {run.get('intent')} · "
                             f"tenant {run.get('tenant')}")
    grid.add_row("started", f"{ago(run.get('created_at'), now=now)} ({iso(run.get('created_at'))})")
    if run.get("ended_at") is not None:
        grid.add_row("ended", f"{ago(run.get('ended_at'), now=now)} ({iso(run.get('ended_at'))}), "
                              f"took {took(run, now=now)}")
    else:
        grid.add_row("running", f"for {took(run, now=now).removesuffix(' so far')}; last change "
                                f"{ago(run.get('updated_at'), now=now)}")
        grid.add_row("position", position(why))
    grid.add_row("spend", spend(run))
    if run.get("parent_run_id"):
        grid.add_row("parent", str(run["parent_run_id"]))
    items = flatten(why.get("waiting_for") or [])
    lines = [describe(i, now=now, hint_suffix=hint_suffix) for i in items] or [str(why.get("summary", ""))]
    grid.add_row("explain", "\n".join(lines))
    parts: list[RenderableType] = [head, grid]
    if run.get("error"):
        parts += [Text("error:", style="red"), _json(run["error"])]
    if run.get("output") is not None:
        parts += [Text("output:", style="bold"), _json(run["output"])]
    return Group(*parts)


def approvals_table(approvals: Sequence[Mapping[str, Any]], *, now: float, title: str = "") -> Table:
    """Pending approvals: id, run, node, when it was asked, by when it must be answered, the prompt."""
    table = _table(title)
    for name in ("approval", "run", "node", "asked", "answer by", "prompt"):
        table.add_column(name, no_wrap=name != "prompt", overflow="fold")
    for a in approvals:
        by_when = f"{ago(a.get('expires_at'), now=now)} ({iso(a.get('expires_at'))})" if a.get("expires_at") else "-"
        table.add_row(str(a.get("id", "")), str(a.get("run_id", "")), str(a.get("node_id", "")),
                      ago(a.get("requested_at"), now=now), by_when, str(a.get("prompt") or ""))
    return table


def fleet_status(fleet: Mapping[str, Any], processes: Sequence[Any], *, now: float) -> RenderableType:
    """Each process of the table (up or not, and how we know), then each routed queue's depth and oldest row."""
    procs = _table("processes")
    for name in ("process", "kind", "state", "how we know"):
        procs.add_column(name, no_wrap=name != "how we know", overflow="fold")
    for process in processes:
        state, why = process_state(process, fleet)
        style = {"up": "bold green", "down": "bold red", "crash-looping": "bold red", "busy": "bold yellow",
                 "restarting": "bold yellow"}.get(state.split()[0], "dim")
        procs.add_row(process.name, process.kind, Text(state, style=style), why)
    known = {p.name for p in processes}
    for name in sorted({str(c.get("name")) for c in fleet.get("consumers") or []} - known):
        hosts = [str(c.get("hostname")) for c in fleet.get("consumers") or [] if c.get("name") == name]
        procs.add_row(name, "celery", Text("up", style="bold green"),
                      f"not in the process table; {len(hosts)} consumer(s) answered: {', '.join(hosts)}")
    queues = _table("queues")
    for name, justify in (("queue", "left"), ("broker depth", "right"), ("untaken rows", "right"),
                          ("running", "right"), ("scheduled", "right"), ("oldest untaken", "right"),
                          ("by status", "left")):
        queues.add_column(name, justify=justify, no_wrap=True)
    for q in fleet.get("queues") or []:
        depth = q.get("broker_depth")
        by_status = ", ".join(f"{k} {v}" for k, v in sorted((q.get("by_status") or {}).items()))
        queues.add_row(str(q.get("queue")), "?" if depth is None else str(depth), str(q.get("waiting", 0)),
                       str(q.get("running", 0)), str(q.get("scheduled", 0)),
                       "-" if q.get("oldest_created_at") is None else ago(q["oldest_created_at"], now=now),
                       by_status)
    broker = fleet.get("broker") or {}
    head = Text.assemble(("fleet ", "bold"), f"checked {ago(fleet.get('checked_at'), now=now)} · shards "
                         f"{fleet.get('shards')} · broker ",
                         ("reachable", "green") if broker.get("reachable") else
                         (f"unreachable: {broker.get('error')}", "bold red"))
    return Group(head, procs, queues)


def process_state(process: Any, fleet: Mapping[str, Any]) -> tuple[str, str]:
    """``(state, how we know)`` of one process of the table from ``GET /api/fleet``'s answer. The supervisor's
    word comes first when it has given up on a copy or is restarting one; else what the fleet answers."""
    supervised = supervision_of(process, fleet)
    if supervised is not None:
        return supervised
    if process.kind == "celery":
        replies = [c for c in fleet.get("consumers") or [] if c.get("name") == process.name]
        copies = process.copies(int(fleet.get("shards") or 1))
        if replies:
            return f"up ({len(replies)} of {copies})" if copies > 1 else "up", \
                f"{len(replies)} consumer(s) answered: {', '.join(c.get('hostname', '') for c in replies)}"
        queues = set(process.queues(int(fleet.get("shards") or 1)))
        busy = sum(q.get("running", 0) for q in fleet.get("queues") or [] if q.get("queue") in queues)
        if busy:
            return "busy", f"no answer to the broadcast, but {busy} task(s) run on its queues under a live lease"
        if not (fleet.get("broker") or {}).get("reachable"):
            return "unknown", "the broker cannot be asked"
        return "down", f"no consumer answered ({fleet.get('consumer_source', 'broadcast')})"
    if process.port_setting == "api_port":
        api = fleet.get("api") or {}
        return "up", f"the API answered (pid {api.get('pid')} on {api.get('hostname')})"
    probe = (fleet.get("http") or {}).get(process.port_setting or "")
    if probe:
        return str(probe.get("state", "unknown")), str(probe.get("detail", ""))
    copies = _supervised_copies(process, fleet)
    if copies:
        restarts = sum(int(c.get("restarts") or 0) for c in copies)
        return "up", f"cogo up runs it (pid {', '.join(str(c.get('pid')) for c in copies)}; {restarts} restart(s))"
    return "unknown", "a loop process has no signal the API can observe"


def _supervised_copies(process: Any, fleet: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    report = fleet.get("supervision") or {}
    return [c for c in (report.get("processes") or {}).values() if c.get("process") == process.name]


def supervision_of(process: Any, fleet: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(state, why)`` when ``cogo up`` reports a copy of ``process`` crash-looping or being restarted."""
    copies = _supervised_copies(process, fleet)
    looping = [c for c in copies if c.get("state") == "crash_looping"]
    if looping:
        c = looping[0]
        return "crash-looping", (f"cogo up gave up after {c.get('restarts')} restart(s): last exit code "
                                 f"{c.get('last_exit_code')}; it stays stopped: fix the cause, then restart cogo up; "
                                 f"see {c.get('log')}")
    restarting = [c for c in copies if c.get("state") == "restarting"]
    if restarting:
        c = restarting[0]
        return "restarting", f"exited with code {c.get('last_exit_code')}; cogo up restarts it after its backoff"
    return None


def intents_table(intents: Sequence[Mapping[str, Any]]) -> Table:
    """Each intent: its workflow, its one-line description and the fields its payload takes."""
    table = _table()
    for name in ("intent", "workflow", "description", "payload fields (* required)"):
        table.add_column(name, no_wrap=name in ("intent", "workflow"), overflow="fold")
    for intent in sorted(intents, key=lambda i: str(i.get("name", ""))):
        table.add_row(str(intent.get("name", "")), str(intent.get("workflow", "")),
                      str(intent.get("description") or ""), schema_fields(intent.get("input_schema")))
    return table


def schema_fields(schema: Any) -> str:
    """A JSON Schema object's fields in one line: ``spec: string*, documents: array of object``."""
    if not isinstance(schema, Mapping):
        return "-"
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return "any JSON object" if schema.get("type", "object") == "object" else _type_of(schema)
    required = set(schema.get("required") or [])
    return ", ".join(f"{name}: {_type_of(spec)}{'*' if name in required else ''}" for name, spec in properties.items())


def _type_of(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return "any"
    kind = spec.get("type")
    if kind == "array" and isinstance(spec.get("items"), Mapping):
        return f"array of {_type_of(spec['items'])}"
    if isinstance(kind, list):
        return " | ".join(map(str, kind))
    if kind is None and isinstance(spec.get("anyOf"), list):
        return " | ".join(_type_of(s) for s in spec["anyOf"])
    return str(kind or "any")
