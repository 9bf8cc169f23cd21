"""The operator's CLI against a running fleet: the real ``cogo`` console script, its output read as a person would.

One fleet (embedded Redis, SQLite, real processes) serves every test of this module; each test uses its own
tenant, so none sees another's runs or approvals.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bus.db import make_engine
from coordinator.client import Client
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.api import make_key
from tests.support.running import Running
from tests.support.services import unique
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

COGO = str(Path(sys.executable).with_name("cogo"))
STARTED = [*CORE, "test-slow-worker", "cogo-metrics-server"]


class Ops:
    """The running fleet, its admin key, and a way to run ``cogo`` against it."""

    def __init__(self, fleet: Fleet, key: str, marks: Path):
        self.fleet, self.key, self.marks = fleet, key, marks

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
        env.update(COGO_API_URL=self.fleet.api_url, COGO_HOME=str(self.fleet.settings.home), COLUMNS="240",
                   PYTHONUNBUFFERED="1", **extra)
        return env

    def cogo(self, *args: str, timeout_s: float = 60.0, **env: str) -> subprocess.CompletedProcess:
        """Run ``cogo <args>`` to its end; stdout and stderr together in ``.stdout``."""
        return subprocess.run([COGO, *args], env=self.env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout_s, check=False)

    def client(self) -> Client:
        return Client(self.fleet.api_url, api_key=self.key)

    def payload(self, sleep_s: float = 0.0) -> dict:
        return {"marks_dir": str(self.marks), "sleep_s": sleep_s}

    def pending_approval(self, client: Client, tenant: str) -> dict:
        return wait_until(lambda: next(iter(client.approvals(tenant=tenant)), None), timeout=60,
                          message=f"an approval of tenant {tenant}")


def Background(args: list[str], env: dict[str, str]) -> Running:  # noqa: N802 - reads as what it starts
    """``cogo <args>`` left running in the background."""
    return Running([COGO, *args], env)


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-ops")
    marks = root / "marks"
    marks.mkdir()
    settings = fleet_settings(root)  # no broker URL: the embedded Redis, nothing shared is touched
    with Fleet(settings, only=STARTED, processes=TABLE, free_ports=True, env={"PYTHONUNBUFFERED": "1"},
               console=Console(quiet=True), show_logs=False) as fleet:
        key = getattr(fleet, "api_key", None)
        if key is None:  # until the launcher writes one: an admin key in the fleet's ledger, where cogo looks
            engine = make_engine(fleet.settings.database_url)
            key = make_key(engine, "ops")
            engine.dispose()
            key_file = fleet.settings.home / "admin.key"
            key_file.write_text(key)
            key_file.chmod(0o600)
        yield Ops(fleet, key, marks)


def test_submit_wait_says_it_waits_for_a_person_and_approve_lets_the_run_finish(ops):
    tenant = unique("ops-a")
    submit = Background(["submit", "gated", "--tenant", tenant, "--payload", json.dumps(ops.payload(sleep_s=3.0)),
                         "--wait", "--timeout", "180"], ops.env())
    try:
        found = wait_until(lambda: re.search(r"cogo approve (\S+)", submit.output) or submit.proc.poll() is not None,
                           timeout=120, message="submit --wait to print the approve command")
        assert submit.proc.poll() is None, submit.output
        approval_id = found.group(1)
        run_id = re.search(r"submitted run (\S+)", submit.output).group(1)
        assert f"run {run_id}: step work, attempt 1 of 2 (running)" in submit.output
        assert f"the run waits for a person to approve or reject approval {approval_id} at step ask: 'Ship it?'" \
            in submit.output
        assert f"cogo reject {approval_id} --reason" in submit.output

        listed = ops.cogo("approvals", "--tenant", tenant)
        assert listed.returncode == 0, listed.stdout
        row = next(line for line in listed.stdout.splitlines() if line.strip().startswith(approval_id))
        assert run_id in row and " ask " in row and "Ship it?" in row
        assert re.search(r"(just now|\d+ s ago)", row) and re.search(r"in 59 min|in 1 h", row), row

        shown = ops.cogo("run", run_id)
        assert shown.returncode == 0, shown.stdout
        assert f"run {run_id} waiting" in shown.stdout
        assert "workflow  gated v1 · intent gated" in shown.stdout
        assert "position  step ask waits for a person (approval" in shown.stdout
        # No budget in the intent or its definition: the operator's ceilings are the run's budget.
        assert re.search(r"spend +0 / 100,000,000 tokens · \$0\.0000 / \$1,000\.0000", shown.stdout), shown.stdout
        assert re.search(rf"ask: waits for a person \('Ship it\?'\): approval {approval_id} pending since "
                         rf"(just now|\d+ s ago), answer due in (59 min|1 h)", shown.stdout), shown.stdout

        approved = ops.cogo("approve", approval_id, "--comment", "lgtm")
        assert approved.returncode == 0, approved.stdout
        assert f"approved {approval_id}: run {run_id} resumes" in approved.stdout

        assert submit.wait(timeout_s=120) == 0, submit.output
        assert re.search(rf"^run {run_id} completed in [\d.]+s", submit.output, re.MULTILINE), submit.output
        assert '"outcome": "shipped"' in submit.output and '"comment": "lgtm"' in submit.output
    finally:
        submit.kill()

    runs = ops.cogo("runs", "--tenant", tenant)
    assert runs.returncode == 0, runs.stdout
    row = next(line for line in runs.stdout.splitlines() if line.strip().startswith(run_id))
    assert re.search(rf"{run_id} +gated +{tenant} +completed +(just now|\d+ s ago) +\d+\.\d s", row), row
    ended = ops.cogo("run", run_id)
    assert f"run {run_id} completed" in ended.stdout and re.search(r"took \d+\.\d s", ended.stdout), ended.stdout
    assert "position" not in ended.stdout and "run completed at 20" in ended.stdout
    again = ops.cogo("approve", approval_id)
    assert again.returncode == 1 and "error [approval.not_pending]" in again.stdout


def test_reject_needs_a_reason_and_takes_the_reject_route(ops):
    tenant = unique("ops-r")
    with ops.client() as client:
        run_id = client.submit("gated", tenant=tenant, payload=ops.payload())
        approval = ops.pending_approval(client, tenant)
        bare = ops.cogo("reject", approval["id"])
        assert bare.returncode == 2 and "--reason" in bare.stdout
        rejected = ops.cogo("reject", approval["id"], "--reason", "not now")
        assert rejected.returncode == 0, rejected.stdout
        assert f"rejected {approval['id']}: run {run_id} takes its reject route" in rejected.stdout
        run = client.wait(run_id, timeout_s=60)
    assert run["output"] == {"outcome": "dropped", "comment": "not now"}
    listed = ops.cogo("runs", "--tenant", tenant, "--status", "completed", "--intent", "gated")
    assert run_id in listed.stdout and "1 run, newest first" in listed.stdout
    none = ops.cogo("runs", "--tenant", tenant, "--intent", "codegen")
    assert none.returncode == 0 and none.stdout.strip() == "no runs match"


def test_cancel_ends_a_waiting_run_and_its_approval(ops):
    tenant = unique("ops-c")
    with ops.client() as client:
        run_id = client.submit("gated", tenant=tenant, payload=ops.payload())
        ops.pending_approval(client, tenant)
        cancelled = ops.cogo("cancel", run_id, "--reason", "operator says no")
        assert cancelled.returncode == 0, cancelled.stdout
        assert f"cancel of run {run_id} accepted" in cancelled.stdout
        wait_until(lambda: client.run(run_id)["status"] == "cancelled", timeout=60, message="the run to be cancelled")
    shown = ops.cogo("run", run_id)
    assert f"run {run_id} cancelled" in shown.stdout and "operator says no" in shown.stdout
    assert ops.cogo("approvals", "--tenant", tenant).stdout.strip() == "no approval is pending"
    twice = ops.cogo("cancel", run_id)
    assert twice.returncode == 1 and "error [run.terminal]" in twice.stdout


def test_status_shows_each_process_of_the_table_and_each_routed_queue(ops):
    shown = ops.cogo("status")
    assert shown.returncode == 0, shown.stdout
    rows = {line.split()[0]: line.strip() for line in shown.stdout.splitlines() if line.strip()}
    for name in ("cogo-orchestrator-brain", "cogo-executor-dispatcher"):
        assert re.match(rf"{name} +celery +up +1 consumer\(s\) answered: {name}@", rows[name]), rows[name]
    assert re.match(r"test-slow-worker +celery +up +not in the process table", rows["test-slow-worker"])
    assert re.match(r"orchestrator-chat +http +up +the API answered", rows["orchestrator-chat"])
    assert re.match(r"cogo-metrics-server +http +up +HTTP \d{3} from http://", rows["cogo-metrics-server"])
    # A loop process answers nothing; the supervisor that started it (here, the test's Fleet) reports it.
    assert re.match(r"cogo-bus-reclaimer +loop +up +cogo up runs it \(pid \d+; 0 restart\(s\)\)",
                    rows["cogo-bus-reclaimer"]), rows["cogo-bus-reclaimer"]
    assert re.match(r"cogo-bus-retention +loop +unknown", rows["cogo-bus-retention"])  # not started here
    for process in PROCESSES:  # every process of the table has its line; those not started say so
        assert process.name in rows
        if process.kind == "celery" and process.name not in STARTED:
            assert re.match(rf"{process.name} +celery +down +no consumer answered", rows[process.name])
    for queue in ("orchestrator.decide.0", "orchestrator.execute.0", "test.slow.0", "codegen.generate.0"):
        assert re.search(rf"{re.escape(queue)} +\d+ +\d+ +\d+ +\d+ +", rows[queue]), rows.get(queue)
    assert "broker reachable" in shown.stdout


def test_intents_lists_each_workflow_with_its_description_and_payload_fields(ops):
    # Depends on GET /api/intents ({"intents": [{name, workflow, description, input_schema}]}), built alongside.
    shown = ops.cogo("intents")
    assert shown.returncode == 0, shown.stdout
    rows = {line.split()[0]: line.strip() for line in shown.stdout.splitlines() if line.strip()}
    assert "One step on test.slow, then a person approves or rejects" in rows["gated"]
    assert rows["codegen"].split()[1] == "codegen-build-test" and "spec: string" in rows["codegen"]
    as_json = json.loads(ops.cogo("intents", "--json").stdout)
    assert {"name", "workflow", "description", "input_schema"} <= set(as_json["intents"][0])


def test_a_wrong_key_is_refused_with_a_hint_and_the_key_file_or_variable_is_used(ops):
    refused = ops.cogo("approvals", "--api-key", "not-a-key")
    assert refused.returncode == 1
    assert "error [auth." in refused.stdout
    assert f"hint: set COGO_API_KEY or pass --api-key; on the embedded default the key is in " \
           f"{ops.fleet.settings.home / 'admin.key'}" in refused.stdout
    by_variable = ops.cogo("approvals", "--tenant", unique("nobody"), COGO_API_KEY=ops.key)
    assert by_variable.returncode == 0 and by_variable.stdout.strip() == "no approval is pending"


def test_the_banner_says_where_the_api_key_is_and_never_shows_it(ops):
    from ecosystem import render

    console = Console(width=240, record=True, color_system=None)
    console.print(render.fleet_summary(ops.fleet))
    text = console.export_text()
    key_file = re.escape(str(ops.fleet.settings.home / "admin.key"))
    assert re.search(rf"^API key +in {key_file} ", text, re.MULTILINE), text
    assert ops.key not in text
    assert "Flower login" not in text  # no Flower in this fleet: no credentials to show
