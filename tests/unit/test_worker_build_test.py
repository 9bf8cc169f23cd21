"""The build-test handler: a real sandbox, a real compiler and a real pytest in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from bus.envelope import Assignment
from bus.errors import TTLExpired, WorkFailed
from tests.support.waiting import wait_until
from workers.build_test import build_test
from workers.handler import WorkContext
from workers.sandbox import safe_path

ADD = "def add(a, b):\n    return a + b\n"
TESTS = ("from add import add\n\n\ndef test_small():\n    assert add(2, 3) == 5\n\n\n"
         "def test_wrong():\n    assert add(2, 2) == 5\n")


def context(tmp_path: Path, assignment_id: str = "bt", *, ttl_s: float = 60) -> WorkContext:
    return WorkContext(assignment_id=assignment_id,
                       run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                       assignment=Assignment(agent_id="build-test"), deadline=time.time() + ttl_s,
                       artifacts_root=tmp_path)


def edit(path: str, content: str, action: str = "create") -> dict[str, str]:
    return {"path": path, "action": action, "content": content}


def test_a_failing_test_is_a_result_not_an_exception(tmp_path):
    result = build_test(context(tmp_path), {"edits": [edit("add.py", ADD), edit("test_add.py", TESTS)]})
    out = result.output
    assert (out["build_ok"], out["passed"], out["failed"], out["success_rate"]) == (True, 1, 1, 0.5)
    assert "test_wrong" in out["feedback"]
    report = json.loads(Path(out["report_path"]).read_text())
    assert report["build"] == {"ok": True, "errors": [], "files": 2}
    assert report["tests"]["passed"] == 1 and report["tests"]["failed"] == 1 and report["tests"]["errors"] == 0
    assert report["tests"]["duration_s"] > 0 and "1 failed, 1 passed" in report["tests"]["output_tail"]
    assert report["success_rate"] == 0.5
    assert out["report_path"] == str((tmp_path / "bt" / "build-test" / "report.json").resolve())
    assert result.result_url == Path(out["report_path"]).as_uri()
    assert (tmp_path / "bt" / "build-test" / "workspace" / "add.py").read_text() == ADD


def test_a_syntax_error_fails_the_build_and_skips_the_tests(tmp_path):
    result = build_test(context(tmp_path), {"edits": [edit("ok.py", "x = 1\n"), edit("add.py", "def add(a, b)\n"),
                                                      edit("pkg/bad.py", "return 1\n")]})
    out = result.output
    assert out["build_ok"] is False and out["success_rate"] == 0.0 and out["passed"] == 0
    report = json.loads(Path(out["report_path"]).read_text())
    assert len(report["build"]["errors"]) == 2  # every broken file is named, not only the first
    assert "add.py" in report["build"]["errors"][0] and "pkg/bad.py" in report["build"]["errors"][1]
    assert report["tests"]["exit_code"] is None
    assert "add.py" in out["feedback"]


def test_an_import_error_in_a_test_counts_as_an_error(tmp_path):
    result = build_test(context(tmp_path), {"edits": [edit("test_x.py", "import missing_module\n")]})
    assert result.output["errors"] == 1 and result.output["success_rate"] == 0.0


def test_no_tests_gives_a_zero_success_rate(tmp_path):
    result = build_test(context(tmp_path), {"edits": [edit("add.py", ADD)]})
    assert (result.output["build_ok"], result.output["passed"], result.output["success_rate"]) == (True, 0, 0.0)


@pytest.mark.parametrize("path", ["/etc/passwd", "../escape.py", "pkg/../../escape.py", "C:/x.py",
                                  "pkg\\..\\..\\x.py", "", "~/x.py", "."])
def test_unsafe_paths_are_refused_before_anything_is_written(tmp_path, path):
    with pytest.raises(WorkFailed) as raised:
        build_test(context(tmp_path), {"edits": [edit("first.py", "x = 1\n"), edit(path, "x = 2\n")]})
    assert raised.value.code == "edits.unsafe" and raised.value.retryable is False
    assert not (tmp_path / "bt" / "build-test" / "workspace" / "first.py").exists()
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "bt" / "escape.py").exists()


def test_a_symlink_cannot_lead_outside_the_workspace(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "link").symlink_to(tmp_path)
    with pytest.raises(WorkFailed) as raised:
        safe_path(workspace, "link/escape.py")
    assert raised.value.code == "edits.unsafe"


@pytest.mark.parametrize(("input", "code"), [
    ({}, "input.invalid"),
    ({"edits": [{"path": "a.py"}]}, "edits.invalid"),
    ({"edits": [edit("a.py", "", action="delete")]}, "edits.invalid"),
    ({"edits_path": "/etc/hostname"}, "input.unsafe"),
])
def test_malformed_input_is_a_permanent_failure(tmp_path, input, code):
    with pytest.raises(WorkFailed) as raised:
        build_test(context(tmp_path), input)
    assert raised.value.code == code and raised.value.retryable is False


def test_a_missing_edits_file_is_a_permanent_failure(tmp_path):
    with pytest.raises(WorkFailed) as raised:
        build_test(context(tmp_path), {"edits_path": str(tmp_path / "gen" / "edits.json")})
    assert raised.value.code == "input.not_found"


def test_base_files_are_written_before_the_edits(tmp_path):
    result = build_test(context(tmp_path), {"files": {"add.py": "def add(a, b):\n    return a - b\n"},
                                            "edits": [edit("add.py", ADD, "replace"),
                                                      edit("test_add.py", TESTS.split("\n\n\ndef test_wrong")[0])]})
    assert result.output["passed"] == 1 and result.output["success_rate"] == 1.0


def test_a_retry_starts_from_an_empty_workspace(tmp_path):
    build_test(context(tmp_path), {"edits": [edit("test_old.py", "def test_old():\n    assert False\n")]})
    result = build_test(context(tmp_path), {"edits": [edit("test_new.py", "def test_new():\n    assert True\n")]})
    assert (result.output["passed"], result.output["failed"]) == (1, 0)
    assert not (tmp_path / "bt" / "build-test" / "workspace" / "test_old.py").exists()


def test_the_sandbox_sees_no_cogo_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("COGO_LLM_API_KEY", "sk-secret")
    probe = "import os\n\n\ndef test_env():\n    assert not [k for k in os.environ if k.startswith('COGO_')]\n"
    result = build_test(context(tmp_path), {"edits": [edit("test_env.py", probe)]})
    assert result.output["success_rate"] == 1.0


def test_the_host_projects_pytest_configuration_does_not_leak_in(tmp_path):
    # An ancestor config that would break any run that adopted it.
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "--no-such-option"\n')
    artifacts = tmp_path / "artifacts"
    result = build_test(context(artifacts), {"edits": [edit("test_ok.py", "def test_ok():\n    pass\n")]})
    assert result.output["passed"] == 1


def test_a_past_deadline_raises_ttl_expired(tmp_path):
    with pytest.raises(TTLExpired):
        build_test(context(tmp_path, ttl_s=-1), {"edits": [edit("add.py", ADD)]})


@pytest.mark.timeout(30)  # waiting for the 120 s test instead of killing it would blow this deadline
def test_tests_running_past_the_ttl_are_killed_and_raise_ttl_expired(tmp_path):
    slow = "import time\n\n\ndef test_slow():\n    time.sleep(120)\n"
    with pytest.raises(TTLExpired):
        build_test(context(tmp_path, ttl_s=3), {"edits": [edit("test_slow.py", slow)]})


def test_an_alarm_that_interrupts_the_tests_takes_the_test_processes_with_it(tmp_path):
    """The runtime's TTL guard raises TTLExpired from SIGALRM mid-wait; no test process may outlive it."""
    marker = f"cogo-slow-{uuid.uuid4().hex[:12]}"
    started = tmp_path / "bt" / "build-test" / "workspace" / "started"
    slow = (f"import os, time\n\n\ndef test_slow():\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', [{marker!r}, '60'])\n"
            f"    open('started.tmp', 'w').close()\n    os.replace('started.tmp', 'started')\n    time.sleep(60)\n")

    def expire(_signum, _frame):
        raise TTLExpired("alarm")

    def alarm_once_the_test_runs():
        wait_until(started.exists, timeout=30, message="the slow test to start")
        wait_until(lambda: _marked(marker), timeout=30, message="its child to run")
        os.kill(os.getpid(), signal.SIGALRM)

    previous = signal.signal(signal.SIGALRM, expire)
    sender = threading.Thread(target=alarm_once_the_test_runs, daemon=True)
    sender.start()
    try:
        with pytest.raises(TTLExpired, match="alarm"):
            build_test(context(tmp_path), {"edits": [edit("test_slow.py", slow)]})
    finally:
        sender.join(timeout=30)
        signal.signal(signal.SIGALRM, previous)
    wait_until(lambda: not _marked(marker), timeout=10, message=f"the test's child {marker} to be gone")


def _marked(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if marker in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]


def test_content_that_is_not_utf8_text_is_a_permanent_failure(tmp_path):
    with pytest.raises(WorkFailed) as raised:
        build_test(context(tmp_path), {"edits": [edit("a.py", "x = '\ud800'\n")]})
    assert raised.value.code == "edits.invalid" and raised.value.retryable is False
