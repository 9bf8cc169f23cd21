"""cogo-build-test-worker: apply edits in a fresh workspace, compile and test them in the sandbox, report.

Input: ``{"edits_path": str}`` or ``{"edits": [...]}``, plus ``"files": {path: content}?`` written
first as the base tree. Failing tests are a result, not an error — the workflow's gate judges
``success_rate``; only infrastructure problems raise.

Generated code runs confined (``workers/confine.py``). The test counts come only from the verdict
plugin (``workers/verdict.py``), loaded from the trusted install and writing to a descriptor the
worker opened outside the sandbox — never from pytest's output or a file the workspace could write.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from bus.errors import TTLExpired, WorkFailed
from bus.settings import Settings
from workers.confine import Completed, Layout, Sandbox, prepare, trusted_path, workspace_path
from workers.handler import WorkContext, WorkResult
from workers.sandbox import apply_edits, confined, tail

log = logging.getLogger(__name__)

ROUTE = ("code", "build-test")
OUTPUT_TAIL_CHARS = 4000
"""How much of pytest's output the report keeps."""
FEEDBACK_CHARS = 1500
"""How much of it goes into the output, for codegen's feedback loop."""
VERDICT_MAX_BYTES = 4096
"""More than this in the verdict file is not one verdict."""

# Compiles every module (no bytecode written) and reports every broken file, not only the first.
# Generated code is compiled, never run, here; it still runs confined so that a pathological file
# cannot take the worker down.
_COMPILE_SCRIPT = """
import json, sys, traceback
errors = []
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            compile(f.read(), path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        errors.append("".join(traceback.format_exception_only(exc)).strip())
print("COGO-BUILD " + json.dumps(errors))
"""

# Loads the verdict plugin from the trusted directory before pytest imports anything of the workspace;
# pytest itself is imported here, so a pytest.py in the workspace cannot stand in for it.
_RUN_TESTS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("cogo_verdict", sys.argv[1])
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
plugin.FD = int(sys.argv[2])
import pytest
sys.exit(pytest.main(sys.argv[3:], plugins=[plugin]))
"""
_KILLED_BY = {152: "sandbox.cpu_limit", -24: "sandbox.cpu_limit", 137: "sandbox.killed", -9: "sandbox.killed"}
"""Exit statuses of a test process killed by a signal (128+n from a namespace's shell, -n when bare)."""


def build_test(ctx: WorkContext, input: dict[str, Any], *, sandbox: Sandbox | None = None) -> WorkResult:
    """Apply the edits in ``artifacts/<taskId>/build-test/workspace/``, build, test and write report.json.

    Raises:
        WorkFailed: ``sandbox.unavailable`` when generated code cannot be confined as configured
            (before anything is written), ``edits.*`` / ``input.*`` for bad input.
    """
    sandbox = sandbox or Sandbox.from_settings(Settings.from_env())
    mode = sandbox.mode  # fail closed before touching anything
    edits = _read_edits(ctx, input)
    ctx.check_deadline()
    home = ctx.artifacts_dir / "build-test"
    layout = _fresh_layout(home)
    written = apply_edits(layout.workspace, edits)
    build = _build(ctx, sandbox, home, layout)
    tests = _test(ctx, sandbox, home, layout) if build["ok"] else _not_run("build failed")
    total = tests["passed"] + tests["failed"] + tests["errors"]
    rate = round(tests["passed"] / total, 4) if total else 0.0
    report = {"build": build, "tests": tests, "success_rate": rate, "files": written,
              "workspace": str(layout.workspace.resolve()), "sandbox": mode}
    path = home / "report.json"
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    summary = (f"build {'ok' if build['ok'] else 'failed'}; {tests['passed']} passed, {tests['failed']} failed, "
               f"{tests['errors']} errors")
    if tests.get("limit"):
        summary += f" ({tests['limit']})"
    feedback = "" if rate == 1.0 else ("\n".join(build["errors"]) or tests["output_tail"])[-FEEDBACK_CHARS:]
    output = {"report_path": str(path.resolve()), "build_ok": build["ok"], "passed": tests["passed"],
              "failed": tests["failed"], "errors": tests["errors"], "success_rate": rate,
              "summary": summary, "feedback": feedback, "sandbox": mode}
    if tests.get("limit"):
        output["limit"] = tests["limit"]
    return WorkResult(output=output, result_url=path.resolve().as_uri())


def _read_edits(ctx: WorkContext, input: dict[str, Any]) -> list[dict[str, Any]]:
    if "edits_path" in input:
        path = confined(ctx.artifacts_root, input["edits_path"], what="edits_path")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise WorkFailed(f"{path} is not JSON: {exc}", retryable=False, code="edits.invalid") from exc
        edits = data.get("edits") if isinstance(data, dict) else data
    elif "edits" in input:
        edits = input["edits"]
    else:
        raise WorkFailed("build-test needs 'edits_path' or 'edits'", retryable=False, code="input.invalid")
    if not isinstance(edits, list):
        raise WorkFailed("edits must be a list", retryable=False, code="edits.invalid")
    files = input.get("files") or {}
    if not isinstance(files, dict):
        raise WorkFailed("'files' must map paths to contents", retryable=False, code="input.invalid")
    base = [{"path": p, "action": "create", "content": c} for p, c in files.items()]
    return base + edits


def _fresh_layout(home: Path) -> Layout:
    # A retry gets the same task id: start from nothing so the last attempt's files can't leak in.
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    return prepare(home)


def _build(ctx: WorkContext, sandbox: Sandbox, home: Path, layout: Layout) -> dict[str, Any]:
    workspace = layout.workspace
    sources = sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*.py") if p.is_file())
    if not sources:
        return {"ok": True, "errors": [], "files": 0}
    log_path = home / "build.log"
    done = sandbox.run(_COMPILE_SCRIPT, sources, layout=layout, log_path=log_path, timeout_s=_time_left(ctx))
    _raise_if_expired(ctx, done, "build")
    output = log_path.read_text(encoding="utf-8", errors="replace")
    marker = next((line for line in reversed(output.splitlines()) if line.startswith("COGO-BUILD ")), None)
    if marker is None:
        # The compiler itself died (recursion, memory) on these sources: a build failure, not ours.
        errors = [f"compiler exited with {done.returncode}: {output[-FEEDBACK_CHARS:]}"]
    else:
        errors = json.loads(marker.removeprefix("COGO-BUILD "))
    return {"ok": not errors, "errors": errors, "files": len(sources)}


def _test(ctx: WorkContext, sandbox: Sandbox, home: Path, layout: Layout) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        raise WorkFailed("pytest is not installed for the build-test worker's Python", retryable=False,
                         code="sandbox.no_pytest")
    mode, log_path, verdict_path = sandbox.mode, home / "pytest.log", home / "verdict.jsonl"
    workspace = workspace_path(layout, mode)
    fd = os.open(verdict_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        args = [trusted_path(layout, mode, "cogo_verdict.py"), str(fd), "-q", "-p", "no:cacheprovider",
                "--noconftest", "-c", trusted_path(layout, mode, "pytest.ini"), f"--rootdir={workspace}", workspace]
        done = sandbox.run(_RUN_TESTS, args, layout=layout, log_path=log_path, timeout_s=_time_left(ctx),
                           pass_fds=(fd,))
    finally:
        os.close(fd)
    _raise_if_expired(ctx, done, "tests")
    output = tail(log_path, OUTPUT_TAIL_CHARS)
    counts, problem = read_verdict(verdict_path, done.returncode)
    tests = {**counts, "duration_s": round(done.duration_s, 3), "exit_code": done.returncode, "verdict": "ok"}
    if problem:
        limit = _KILLED_BY.get(done.returncode or 0)
        why = {"sandbox.cpu_limit": f"the CPU-time limit of {sandbox.limits.cpu_s} s",
               "sandbox.killed": "SIGKILL (a sandbox limit, or the code itself)"}.get(limit or "")
        note = f"tests gave no trusted verdict: {problem}" + (f"; killed by {why} [{limit}]" if why else "")
        output = f"{output}\n{note}"
        tests.update(verdict=problem, **({"limit": limit} if limit else {}))
    return {**tests, "output_tail": output}


def read_verdict(path: Path, returncode: int | None) -> tuple[dict[str, int], str | None]:
    """The counts the verdict plugin wrote, or one error and what is wrong with the verdict.

    Exactly one well-formed line that agrees with pytest's exit status is a verdict; nothing, two
    lines (someone else wrote too) or a disagreement is not, and counts as one error.
    """
    failed = {"passed": 0, "failed": 0, "errors": 1, "skipped": 0}
    try:
        raw = path.read_bytes()[:VERDICT_MAX_BYTES + 1]
    except FileNotFoundError:
        return failed, "missing"
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if len(lines) != 1 or len(raw) > VERDICT_MAX_BYTES:
        return failed, "missing" if not lines else "more than one verdict was written"
    try:
        data = json.loads(lines[0])
        counts = {k: data[k] for k in failed}
        exitstatus = data["exitstatus"]
    except (ValueError, KeyError, TypeError):
        return failed, "not a verdict"
    if not all(type(v) is int and v >= 0 for v in (*counts.values(), exitstatus)) or data.get("cogo_verdict") != 1:
        return failed, "not a verdict"
    if exitstatus != returncode:
        return failed, f"the verdict says exit status {exitstatus}, pytest exited with {returncode}"
    return counts, None


def _not_run(reason: str) -> dict[str, Any]:
    return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "duration_s": 0.0, "exit_code": None,
            "verdict": "not run", "output_tail": f"tests not run: {reason}"}


def _time_left(ctx: WorkContext) -> float:
    ctx.check_deadline()
    return ctx.remaining_s()


def _raise_if_expired(ctx: WorkContext, done: Completed, step: str) -> None:
    if done.timed_out:
        ctx.check_deadline()
        raise TTLExpired(f"assignment {ctx.assignment_id}: {step} killed after {done.duration_s:.1f}s at its TTL")


HANDLERS = {ROUTE: build_test}
