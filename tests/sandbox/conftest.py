"""A fake cogo home full of secrets beside build-test's workspace, and helpers to feed it hostile code."""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from bus.envelope import Assignment
from bus.settings import Settings
from tests.support.waiting import wait_until
from workers.build_test import build_test
from workers.confine import Sandbox
from workers.handler import WorkContext, WorkResult

SECRET = "sk-cogo-test-" + uuid.uuid4().hex
"""Planted in the ledger, the worker's environment and files outside the workspace; must never leak."""


@dataclass
class World:
    """One worker's host: its cogo home (ledger, artifacts), its environment and its sandbox."""

    root: Path
    home: Path
    ledger: Path
    env_dir: Path
    artifacts: Path
    settings: Settings

    def sandbox(self, **limits: int) -> Sandbox:
        """The sandbox these settings ask for (``sandbox_cpu_s=2`` …)."""
        fields = {f"sandbox_{k}": v for k, v in limits.items()}
        return Sandbox.from_settings(dataclasses.replace(self.settings, **fields))

    def context(self, assignment_id: str = "bt", ttl_s: float = 60) -> WorkContext:
        return WorkContext(assignment_id=assignment_id,
                           run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                           assignment=Assignment(agent_id="build-test"), deadline=time.time() + ttl_s,
                           artifacts_root=self.artifacts, llm_url="http://127.0.0.1:9", llm_api_key=SECRET)

    def build_test(self, files: dict[str, str], *, assignment_id: str = "bt", sandbox: Sandbox | None = None,
                   **limits: int) -> WorkResult:
        """Run build-test on ``files`` (dedented) in this world's sandbox."""
        edits = [{"path": p, "action": "create", "content": textwrap.dedent(c)} for p, c in files.items()]
        return build_test(self.context(assignment_id), {"edits": edits}, sandbox=sandbox or self.sandbox(**limits))

    def workspace(self, assignment_id: str = "bt") -> Path:
        return self.artifacts / assignment_id / "build-test" / "workspace"

    def loot(self, assignment_id: str = "bt") -> dict[str, Any]:
        """What the hostile code saved in its workspace (it must have run: the file must exist)."""
        return json.loads((self.workspace(assignment_id) / "loot.json").read_text())


CONFINING = ["unshare"] + (["bwrap"] if shutil.which("bwrap") else [])
"""Every confining mode this host has: CI (no bubblewrap) runs them all with unshare, never skipping."""


@pytest.fixture(params=CONFINING)
def world(request, tmp_path, monkeypatch) -> World:
    home = tmp_path / "cogo-home"
    artifacts = home / "artifacts"
    artifacts.mkdir(parents=True)
    ledger = home / "cogo.db"
    ledger.write_text(f"tenant globex input: {SECRET}\n")
    env_dir = tmp_path / "named-by-env"
    env_dir.mkdir()
    (env_dir / "cogo.db").write_text(f"another ledger: {SECRET}\n")
    for name, value in {"COGO_HOME": str(home), "COGO_LLM_API_KEY": SECRET, "COGO_LEDGER_DIR": str(env_dir),
                        "COGO_DATABASE_URL": f"sqlite:///{ledger}", "DATABASE_URL": f"sqlite:///{ledger}",
                        "COGO_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:6379/0", "OPENAI_API_KEY": SECRET}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(home=home, artifacts_dir=artifacts, sandbox=request.param).checked()
    return World(tmp_path, home, ledger, env_dir, artifacts, settings)


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes anywhere on this host whose command line carries ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def assert_none_survive(marker: str) -> None:
    """No process carrying ``marker`` is left (checked with a deadline: the kernel reaps asynchronously)."""
    wait_until(lambda: not processes_with(marker), timeout=10, message=f"every process marked {marker} to be gone")
