"""A worker killed mid-step takes its sandbox with it: nothing it started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import psutil

from tests.support.waiting import wait_until

WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bus.settings import Settings
    from workers.confine import Sandbox
    from workers.namespaces import prepare

    home = Path(sys.argv[1])
    sandbox = Sandbox.from_settings(Settings(home=home, sandbox="auto", sandbox_cpu_s=600).checked())
    layout = prepare(home / "run")
    sandbox.run("import time, sys\\nopen('started', 'w').close()\\ntime.sleep(600)", [sys.argv[2]],
                layout=layout, log_path=home / "log", timeout_s=600)
""")


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_worker_killed_with_sigkill_leaves_no_sandboxed_process_behind(tmp_path):
    marker = f"cogo-orphan-{uuid.uuid4().hex}"
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), marker],
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                              start_new_session=True)
    try:
        wait_until(lambda: (tmp_path / "run" / "workspace" / "started").exists(), timeout=60,
                   message="the sandboxed program never started")
        assert len(_marked(marker)) >= 2  # the worker and what it started in the sandbox
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        wait_until(lambda: not _marked(marker), timeout=20,
                   message=f"sandboxed processes outlived their worker: {_marked(marker)}")
    finally:
        for proc in _marked(marker):
            proc.kill()
