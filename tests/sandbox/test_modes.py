"""COGO_SANDBOX: auto confines, a mode that cannot confine refuses (fail closed), unconfined runs bare."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bus.envelope import Assignment
from bus.errors import WorkFailed
from tests.sandbox.conftest import CONFINING, SECRET
from workers.build_test import build_test
from workers.confine import Limits, Sandbox
from workers.handler import WorkContext
from workers.namespaces import prepare

PASSING = {"test_ok.py": "def test_ok():\n    assert True\n"}


def test_auto_picks_a_mode_that_confines(world):
    auto = Sandbox.from_settings(dataclasses.replace(world.settings, sandbox="auto"))
    assert auto.mode == ("bwrap" if shutil.which("bwrap") else "unshare")


@pytest.mark.parametrize("mode", CONFINING)
def test_each_available_mode_passes_its_probe_and_runs_tests(world, mode):
    sandbox = Sandbox.from_settings(dataclasses.replace(world.settings, sandbox=mode))
    out = world.build_test(PASSING, sandbox=sandbox).output
    assert (out["sandbox"], out["passed"], out["success_rate"]) == (mode, 1, 1.0)


def test_bwrap_without_bwrap_refuses_and_names_the_setting_that_accepts_the_risk(world, monkeypatch):
    monkeypatch.setenv("COGO_SANDBOX", "bwrap")
    monkeypatch.setenv("PATH", str(world.root / "empty-bin"))
    ctx = WorkContext(assignment_id="bt", run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                      assignment=Assignment(agent_id="build-test"), deadline=time.time() + 60,
                      artifacts_root=world.artifacts)
    edits = [{"path": p, "action": "create", "content": c} for p, c in PASSING.items()]
    with pytest.raises(WorkFailed) as raised:
        build_test(ctx, {"edits": edits})  # the settings come from the environment, as in the worker
    assert raised.value.code == "sandbox.unavailable" and raised.value.retryable is False
    assert "COGO_SANDBOX=unconfined" in str(raised.value) and "not found on PATH" in str(raised.value)
    assert not (world.artifacts / "bt" / "build-test").exists()  # refused before anything was written


def test_a_refusal_is_not_remembered_so_a_fixed_host_works_without_a_restart(world, monkeypatch):
    sandbox = Sandbox("unshare", Limits())
    monkeypatch.setenv("PATH", str(world.root / "empty-bin"))
    with pytest.raises(WorkFailed):
        sandbox.mode  # noqa: B018
    monkeypatch.undo()
    assert sandbox.mode == "unshare"


def test_unconfined_runs_bare_and_says_so_loudly(world, caplog):
    sandbox = Sandbox.from_settings(dataclasses.replace(world.settings, sandbox="unconfined"))
    with caplog.at_level(logging.WARNING, logger="workers.confine"):
        out = world.build_test(PASSING, sandbox=Sandbox("unconfined", Limits())).output
        assert sandbox.mode == "unconfined"
    assert (out["sandbox"], out["passed"], out["success_rate"]) == ("unconfined", 1, 1.0)
    assert any("WITHOUT isolation" in r.getMessage() for r in caplog.records)


def test_a_cogo_home_under_a_bound_directory_is_masked(world):
    # The virtualenv is bound read-only into the sandbox; a cogo home inside it must still be hidden.
    home = Path(tempfile.mkdtemp(prefix="cogo-home-", dir=sys.prefix))
    try:
        (home / "cogo.db").write_text(f"ledger {SECRET}\n")
        sandbox = Sandbox.from_settings(dataclasses.replace(world.settings, home=home))
        probe = (f"import json\n\n\ndef test_read():\n    try:\n        got = open({str(home / 'cogo.db')!r}).read()\n"
                 f"    except OSError as exc:\n        got = f'refused: {{exc}}'\n"
                 f"    json.dump({{'got': got}}, open('loot.json', 'w'))\n")
        world.build_test({"test_read.py": probe}, sandbox=sandbox)
        assert world.loot()["got"].startswith("refused")
    finally:
        shutil.rmtree(home)


def test_a_sandbox_that_cannot_be_built_on_use_refuses(world, tmp_path):
    sandbox = world.sandbox()
    layout = prepare(tmp_path / "bt")
    shutil.rmtree(layout.workspace)  # the bind of the workspace fails inside the setup
    with pytest.raises(WorkFailed) as raised:
        sandbox.run("print('hi')", [], layout=layout, log_path=tmp_path / "log", timeout_s=30)
    assert raised.value.code == "sandbox.unavailable" and "COGO_SANDBOX=unconfined" in str(raised.value)
