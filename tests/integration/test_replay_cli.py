"""``cogo replay``: a recorded run replays faithfully; a changed definition shows where it would differ."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from bus.db import make_engine
from bus.migrate import upgrade
from coordinator.definitions import BUILTIN_DIR
from ecosystem.cli import app
from tests.support.harness import Fleet, submit
from workers.handler import WorkResult


def test_replay_reproduces_the_run_and_shows_a_changed_definitions_differences(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = make_engine(url)
    upgrade(engine)
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, payload: WorkResult(output={"ok": True})})
    run_id = submit(fleet, "embed")
    fleet.drain()

    changed = yaml.safe_load((BUILTIN_DIR / "single-task.yaml").read_text())
    changed["nodes"]["work"]["next"] = [{"to": "done", "when": "context.work.ok == `false`"}]
    changed_path = tmp_path / "changed.yaml"
    changed_path.write_text(yaml.safe_dump(changed))

    runner = CliRunner()
    env = {"COGO_DATABASE_URL": url, "COGO_HOME": str(tmp_path)}
    same = runner.invoke(app, ["replay", run_id], env=env)
    assert same.exit_code == 0, same.output
    assert "recorded decisions reproduced" in same.output

    diff = runner.invoke(app, ["replay", run_id, "--definition", str(changed_path)], env=env)
    assert diff.exit_code == 0, diff.output
    assert "decides differently" in diff.output
    assert "FAIL_WORKFLOW" in diff.output  # no transition matches any more: the run would fail

    missing = runner.invoke(app, ["replay", "no-such-run"], env=env)
    assert missing.exit_code == 1 and "run.unknown" in missing.output
