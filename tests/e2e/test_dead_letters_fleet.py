"""Dead letters on a real fleet (embedded Redis, SQLite, real processes), acted on through the ``cogo`` CLI: a
worker fails every attempt, its assignment is held as a dead letter (the run waits), ``cogo dead-letters list``
shows it, the worker is fixed (a flag file its handler reads), ``cogo dead-letters requeue`` sends it again, and
the run completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bus.errors import WorkFailed
from bus.settings import Settings
from coordinator.client import Client
from ecosystem.launcher import Fleet
from ecosystem.processes import Process
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.services import unique
from tests.support.waiting import wait_until
from workers.handler import WorkContext, WorkResult

pytestmark = pytest.mark.e2e

COGO = str(Path(sys.executable).with_name("cogo"))
FIXED = "fixed"
"""The flag file (in the run's ``flag_dir``) that fixes the worker."""
WORKFLOW = """
name: fragile-e2e
version: 1
description: One task that fails until its worker is fixed; held as a dead letter when out of attempts.
start: work
nodes:
  work:
    kind: task
    route: {service: test, role: fragile}
    agent: {agent_id: fragile}
    input: {flag_dir: input.flag_dir}
    retry: {maximum_attempts: 2, initial_interval_ms: 50, dead_letter: true}
    output: work
    next: done
  done: {kind: end, output: {work: context.work}}
"""


def fragile(ctx: WorkContext, payload: dict) -> WorkResult:
    """Fail (retryably) until ``<flag_dir>/fixed`` exists; then succeed, saying which attempt did."""
    if not (Path(payload["flag_dir"]) / FIXED).exists():
        raise WorkFailed("the worker is broken until fixed")
    return WorkResult(output={"attempt": ctx.attempt})


def main(settings: Settings, name: str) -> None:
    """Serve ``test.fragile``."""
    from workers.runtime import serve

    serve(settings, name=name, handlers={("test", "fragile"): fragile})


FRAGILE_WORKER = Process("test-fragile-worker", "celery", f"{__name__}:main", "test.fragile for dead letters",
                         routes=(("test", "fragile"),))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("dead-letters")
    workflows = root / "workflows"
    workflows.mkdir()
    (workflows / "fragile-e2e.yaml").write_text(WORKFLOW)
    settings = fleet_settings(root, workflows_dir=workflows)  # no broker URL: the embedded Redis
    with Fleet(settings, only=[*CORE, FRAGILE_WORKER.name], processes=(*TABLE, FRAGILE_WORKER), free_ports=True,
               env={"PYTHONUNBUFFERED": "1"}, console=Console(quiet=True), show_logs=False) as running:
        yield running


def cogo(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    """``cogo <args>`` against the fleet (its admin key from ``<home>/admin.key``); stdout and stderr together."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
    env.update(COGO_API_URL=fleet.api_url, COGO_HOME=str(fleet.settings.home), COLUMNS="240", PYTHONUNBUFFERED="1")
    return subprocess.run([COGO, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60, check=False)


def test_a_dead_letter_listed_by_the_cli_is_requeued_after_the_fix_and_its_run_completes(fleet, tmp_path):
    tenant = unique("dl")
    client = Client(fleet.api_url, api_key=fleet.api_key)
    run_id = client.submit("fragile-e2e", tenant=tenant, payload={"flag_dir": str(tmp_path)})
    [letter] = wait_until(lambda: client.dead_letters(tenant=tenant), timeout=120,
                          message="the assignment to be held as a dead letter")
    assert (letter["run_id"], letter["attempts"], letter["dead_letter"]) == (run_id, 2, "held")
    assert client.run(run_id)["status"] not in ("completed", "failed", "cancelled")
    assert (f"is a dead letter after 2 attempts (work.failed: the worker is broken until fixed); an operator can "
            f"re-queue or discard it: cogo dead-letters requeue {letter['id']}") in client.explain(run_id)["summary"]

    listed = cogo(fleet, "dead-letters", "list", "--tenant", tenant)
    assert listed.returncode == 0, listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith(letter["id"]))
    assert run_id in row and "test.fragile" in row and "held" in row, row

    (tmp_path / FIXED).write_text("")
    requeued = cogo(fleet, "dead-letters", "requeue", letter["id"])
    assert requeued.returncode == 0, requeued.stdout
    assert f"re-queued {letter['id']}" in requeued.stdout
    run = client.wait(run_id, timeout_s=120)
    assert (run["status"], run["output"]) == ("completed", {"work": {"attempt": 3}})

    again = cogo(fleet, "dead-letters", "requeue", letter["id"])
    assert again.returncode == 1
    assert f"error [dead_letter.not_held]: assignment {letter['id']} is not held as a dead letter" in again.stdout
    shown = cogo(fleet, "dead-letters", "show", letter["id"], "--json")
    assert shown.returncode == 0, shown.stdout
    history = json.loads(shown.stdout)["history"]
    kinds = [h["kind"] for h in history]
    assert kinds.index("dead_letter_held") < kinds.index("dead_letter_requeued") < kinds.index("execute_done")
    assert next(h for h in history if h["kind"] == "dead_letter_requeued")["detail"]["by"].startswith("key:")
    assert cogo(fleet, "dead-letters", "list", "--tenant", tenant).stdout.strip() == "no dead letter is held"
    missing = cogo(fleet, "dead-letters", "discard", "no-such-letter")
    assert (missing.returncode, "error [dead_letter.not_found]" in missing.stdout) == (1, True), missing.stdout
