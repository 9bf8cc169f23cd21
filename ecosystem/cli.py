"""The ``cogo`` command line: run one process or the whole fleet, submit intents, read their traces."""

import importlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from bus.errors import CogoError, ConfigError
from bus.settings import Settings
from ecosystem.cli_support import (
    ApiKeyOption,
    ApiOption,
    UsageError,
    api_suffix,
    client_for,
    default_api_url,
    err,
    handled,
    out,
    parse_payload,
)
from ecosystem.dead_letters_cli import dead_letters_app
from ecosystem.keys_cli import keys_app
from ecosystem.ops_cli import ops

app = typer.Typer(name="cogo", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="cogo: a message-queue worker fleet for AI-agent workflows.")
app.add_typer(keys_app, name="keys")
app.add_typer(dead_letters_app, name="dead-letters")
app.registered_commands += ops.registered_commands  # the operator's commands sit at the top level

DEMO_PAYLOAD = "{}"  # the demo workflow brings its own three specs
CODEGEN_PAYLOAD = json.dumps({"spec": "a function add(a, b) that returns a + b"})


def load_entry(entry: str) -> Callable[[Settings, str], None]:
    """The function named by ``module:function``.

    Raises:
        ConfigError: the entry is malformed, its module does not exist, or it names no callable.
    """
    module_name, sep, attr = entry.partition(":")
    if not (sep and module_name and attr):
        raise ConfigError(f"a process entry must be 'module:function', got {entry!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the module exists but one of its own imports is missing: a bug worth its traceback
        raise ConfigError(f"process entry {entry!r}: no module named {module_name!r}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"process entry {entry!r}: {module_name} has no callable {attr!r}")
    return fn



@app.command()
@handled
def process(name: Annotated[str, typer.Argument(help="A process of the table (see ecosystem/processes.py)")],
            entry: Annotated[str | None, typer.Option(hidden=True, help="Run this module:function instead")] = None,
            ) -> None:
    """Run one process of the fleet in the foreground until SIGTERM or Ctrl-C."""
    from ecosystem.processes import by_name

    if entry is None:
        try:
            entry = by_name(name).entry
        except ConfigError as exc:
            raise UsageError(str(exc), code=exc.code) from None
    from ecosystem.launcher import recorded_broker

    settings = recorded_broker(Settings.from_env())
    fn = load_entry(entry)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bus import tracing

    tracing.setup(settings, service=name)  # off unless an OpenTelemetry endpoint is set (docs/tracing.md)
    fn(settings, name)


@app.command()
@handled
def health(name: Annotated[str, typer.Argument(help="A process of the table (see ecosystem/processes.py)")]) -> None:
    """Exit 0 when that process answers on this host, else 1 saying why (a container's health check)."""
    from ecosystem.health import check
    from ecosystem.launcher import recorded_broker
    from ecosystem.processes import by_name

    try:
        process = by_name(name)
    except ConfigError as exc:
        raise UsageError(str(exc), code=exc.code) from None
    problem = check(process, recorded_broker(Settings.from_env()))
    if problem:
        err.print(f"{name}: unhealthy: {problem}")
        raise typer.Exit(1)
    out.print(f"{name}: healthy")


@app.command()
@handled
def migrate() -> None:
    """Bring the ledger (COGO_DATABASE_URL) to the newest migration."""
    from ecosystem.launcher import migrate_ledger, redact

    settings = Settings.from_env()
    migrate_ledger(settings)
    out.print(f"ledger {redact(settings.database_url)} is at the newest migration")


@app.command()
@handled
def up(only: Annotated[list[str] | None, typer.Option("--only", help="Start only this process (repeatable)")] = None,
       shards: Annotated[int | None, typer.Option(min=1, help="Shards [default: COGO_SHARDS]")] = None,
       ready_timeout: Annotated[float, typer.Option(help="Seconds to wait until every process is ready")] = 60.0,
       free_ports: Annotated[bool, typer.Option(help="Pick free ports for the HTTP processes")] = False,
       ) -> None:
    """Start the whole fleet (embedded Redis and SQLite by default) and supervise it until Ctrl-C."""
    from ecosystem import render
    from ecosystem.launcher import Fleet, sigterm_as_interrupt
    from ecosystem.processes import with_ephemeral

    settings = Settings.from_env()
    try:
        with_ephemeral(settings)  # refuse a COGO_EPHEMERAL that names no worker of the table before starting
        fleet = Fleet(settings, only=only or (), shards=shards, ready_timeout_s=ready_timeout,
                      free_ports=free_ports, console=out)
    except ConfigError as exc:
        raise UsageError(str(exc), code=exc.code) from None
    with sigterm_as_interrupt():
        with fleet:
            api = "" if fleet.api_url == default_api_url(settings) else f" --api {fleet.api_url}"
            out.print(render.fleet_summary(fleet))
            link = render.dashboard_link(fleet) if out.is_terminal else None  # no key in a log or a pipe
            if link is not None:
                out.print(link, soft_wrap=True)
            out.print(Text.assemble(("try:  ", "bold"), f"cogo submit codegen --tenant demo --payload "
                                    f"'{CODEGEN_PAYLOAD}' --wait{api}"), soft_wrap=True)
            out.print("Ctrl-C stops the fleet.", style="dim")
            fleet.supervise()
    out.print("fleet stopped")


@app.command()
@handled
def submit(intent: Annotated[str, typer.Argument(help="What to do, e.g. codegen")],
           tenant: Annotated[str, typer.Option(help="Who asks")] = "default",
           payload: Annotated[str, typer.Option(help="The intent's payload as a JSON object")] = "{}",
           wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to end, showing progress")] = False,
           timeout: Annotated[float, typer.Option(help="Seconds --wait waits")] = 120.0,
           api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Submit an intent; with --wait, show each step and attempt, and what a person must do, until it ends."""
    from ecosystem import render

    body = parse_payload(payload)
    with client_for(api, api_key) as client:
        run_id = client.submit(intent, tenant=tenant, payload=body)
        out.print(Text.assemble("submitted run ", (run_id, "bold")))
        if wait:
            run = _wait_with_progress(client, run_id, timeout, suffix=api_suffix(api))
            out.print(render.run_result(run))
    events_hint = f"cogo events {run_id}{api_suffix(api)}"
    out.print(Text.assemble(("its events: ", "dim"), events_hint))
    if wait and run["status"] != "completed":
        raise typer.Exit(1)


@app.command()
@handled
def events(run_id: Annotated[str, typer.Argument(help="The run's id")],
           category: Annotated[str | None, typer.Option(help="decision, operation, dispatch or sql")] = None,
           type_: Annotated[str | None, typer.Option("--type", help="Type prefix, e.g. decision.")] = None,
           api: ApiOption = None, api_key: ApiKeyOption = None) -> None:
    """Show a run's introspection trace as a table."""
    from ecosystem import render

    with client_for(api, api_key) as client:
        found = client.events(run_id, category=category, type=type_)
    out.print(render.events_table(found, title=f"run {run_id} · {len(found)} events"))


@app.command()
@handled
def demo(intent: Annotated[str, typer.Option(help="The intent to submit")] = "demo",
         tenant: Annotated[str, typer.Option(help="The tenant")] = "demo",
         payload: Annotated[str, typer.Option(help="The payload (JSON object)")] = DEMO_PAYLOAD,
         timeout: Annotated[float, typer.Option(help="Seconds to wait for the run")] = 180.0,
         ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the fleet")] = 90.0,
         logs: Annotated[bool, typer.Option(help="Print the processes' output")] = False) -> None:
    """Start the embedded fleet, run a real workflow, show its result and trace, stop the fleet."""
    from coordinator.client import Client
    from ecosystem import render
    from ecosystem.launcher import Fleet, sigterm_as_interrupt

    body = parse_payload(payload)
    settings = Settings.from_env()
    with sigterm_as_interrupt(), Fleet(settings, free_ports=True, ready_timeout_s=ready_timeout,
                                       console=out, show_logs=logs) as fleet:
        out.print(render.fleet_summary(fleet))
        with Client(fleet.api_url, api_key=getattr(fleet, "api_key", None)) as client:
            run_id = client.submit(intent, tenant=tenant, payload=body)
            out.print(Text.assemble(f"submitted {intent} for tenant {tenant}: run ", (run_id, "bold")))
            run = _wait_with_progress(client, run_id, timeout, check=fleet.check_alive,
                                      suffix=f" --api {fleet.api_url}")
            trace = client.events(run_id)
        out.print("stopping the fleet…")
    out.print("fleet stopped")
    out.print(render.run_result(run))
    out.print(render.events_table(trace, title=f"run {run_id} · {len(trace)} introspection events"))
    if run["status"] != "completed":
        raise typer.Exit(1)


@app.command()
@handled
def replay(run_id: Annotated[str, typer.Argument(help="The recorded run's id")],
           definition: Annotated[Path | None, typer.Option(help="A changed definition (YAML) to replay")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON")] = False) -> None:
    """Replay a recorded run through the pure planner (no worker runs); show how decisions would differ."""
    import json as _json

    from bus.db import make_engine
    from coordinator.definitions import Registry
    from coordinator.replay import replay_run

    settings = Settings.from_env()
    report = replay_run(make_engine(settings.database_url), run_id, definition,
                        registry=Registry.load(settings.workflows_dir))
    if as_json:
        out.print_json(_json.dumps(report, default=str))
    else:
        out.print(report["summary"])
        for diff in report.get("differences", [])[:20]:
            out.print(f"  event #{diff['index']} {diff['event']['kind']}: recorded {len(diff['recorded'])} "
                      f"decisions, replayed {len(diff['replayed'])}")
            for line in _decision_diff(diff["recorded"], diff["replayed"]):
                out.print(f"    {line}")
    if not report.get("faithful", True) and definition is None:
        raise typer.Exit(1)


def _decision_diff(recorded: list, replayed: list) -> list[str]:
    import difflib
    as_lines = lambda ds: [f"{d.get('type')} {({k: v for k, v in d.items() if k != 'type'})}"[:160] for d in ds]  # noqa: E731
    return [line for line in difflib.unified_diff(as_lines(recorded), as_lines(replayed), "recorded", "replayed",
                                                  lineterm="", n=0) if not line.startswith(("---", "+++", "@@"))]


@app.command()
@handled
def manifests(root: Annotated[Path, typer.Option(help="Where docker-compose.yml and Procfile live")] = Path("."),
              check: Annotated[bool, typer.Option("--check", help="Fail if they differ from the table")] = False,
              shards: Annotated[int, typer.Option(help="Shards: one brain and one dispatcher service each")] = 1,
              ) -> None:
    """Write docker-compose.yml, Procfile and k8s/ from the process table (or check them); ``COGO_EPHEMERAL``
    marks workers ephemeral in them."""
    from ecosystem import manifests as m
    from ecosystem.processes import with_ephemeral

    if shards < 1 or shards > 1024:
        raise CogoError(f"--shards must be between 1 and 1024, got {shards}", code="config.invalid")
    table = with_ephemeral(Settings.from_env())
    if check:
        differ = m.stale(root, shards, processes=table)
        if differ:
            raise CogoError(f"{', '.join(differ)} differ from the process table; run `cogo manifests`",
                            code="manifests.stale")
        out.print("manifests agree with the process table")
        return
    for path in m.write(root, shards, processes=table):
        out.print(f"wrote {path}")


class _EventCounter:
    """Counts a run's introspection events incrementally (only new ones are fetched on each poll)."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id, self.count, self.after = client, run_id, 0, 0

    def update(self) -> int:
        """Fetch the events written since the last call; returns the total so far."""
        new = self.client.events(self.run_id, after_id=self.after)
        self.count += len(new)
        self.after = max([self.after, *(int(e.get("id", 0)) for e in new)])
        return self.count


class _Position:
    """Where a waited-for run is; prints a line each time that changes (a step, an attempt, a person)."""

    def __init__(self, client: Any, run_id: str, suffix: str):
        self.client, self.run_id, self.suffix, self.last = client, run_id, suffix, ""

    def update(self, run: dict) -> str:
        """Ask ``explain`` where the run is; print what changed; return the position in words."""
        from coordinator.client import TERMINAL
        from ecosystem import render

        if run["status"] in TERMINAL:
            return run["status"]
        why = self.client.explain(self.run_id)
        now = time.time()
        where = render.position(why)
        if where != self.last:
            self.last = where
            out.print(Text.assemble((f"run {self.run_id}: ", "dim"), where), soft_wrap=True)
            for item in render.flatten(why.get("waiting_for") or []):
                if item.get("kind") == "approval" and item.get("approval_status") == "pending":
                    self._person(item, now)
        return where

    def _person(self, item: dict, now: float) -> None:
        from coordinator.timefmt import ago

        approval = item.get("approval_id")
        due = f"; answer due {ago(item.get('expires_at'), now=now)}" if item.get("expires_at") else ""
        out.print(Text.assemble(("the run waits for a person", "bold yellow"),
                                f" to approve or reject approval {approval} at step {item.get('node_id')}"
                                f"{': ' + repr(item['prompt']) if item.get('prompt') else ''}{due}"), soft_wrap=True)
        out.print(Text.assemble("  approve it:  ", (f"cogo approve {approval}{self.suffix}", "bold")), soft_wrap=True)
        out.print(Text.assemble("  reject it:   ", f"cogo reject {approval} --reason '…'{self.suffix}"),
                  soft_wrap=True)


def _wait_with_progress(client: Any, run_id: str, timeout_s: float,
                        check: Callable[[], None] | None = None, suffix: str = "") -> dict:
    counter = _EventCounter(client, run_id)
    where = _Position(client, run_id, suffix)
    with out.status(f"run {run_id}: submitted") as status:
        def progress(run: dict) -> None:
            if check is not None:
                check()
            status.update(f"run {run_id}: [bold]{run['status']}[/bold] · {where.update(run)} · "
                          f"{counter.update()} events")
        return client.wait(run_id, timeout_s=timeout_s, poll_s=0.25, on_progress=progress)


def main() -> None:
    """The ``cogo`` console script."""
    for console in (out, err):
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console.width = 160  # a file or pipe has room for long lines; a terminal keeps its width
    app()


if __name__ == "__main__":
    main()
