"""cogo-build-test-worker: apply edits in a fresh sandbox, compile every module, run pytest, report.

Input: ``{"edits_path": str}`` or ``{"edits": [...]}``, plus ``"files": {path: content}?`` written
first as the base tree. Failing tests are a result, not an error — the workflow's gate judges
``success_rate``; only infrastructure problems raise.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bus.errors import TTLExpired, WorkFailed
from workers.handler import WorkContext, WorkResult
from workers.sandbox import Completed, apply_edits, confined, run_bounded, scrubbed_env, tail

ROUTE = ("code", "build-test")
OUTPUT_TAIL_CHARS = 4000
"""How much of pytest's output the report keeps."""
FEEDBACK_CHARS = 1500
"""How much of it goes into the output, for codegen's feedback loop."""

# py_compile's own CLI stops at the first broken file; this reports every one, in one process.
# It runs in a child so that a pathological file cannot crash the worker while compiling.
_COMPILE_SCRIPT = """
import json, py_compile, sys
errors = []
for path in sys.argv[1:]:
    try:
        py_compile.compile(path, doraise=True)
    except py_compile.PyCompileError as exc:
        errors.append(exc.msg.strip())
print("COGO-BUILD " + json.dumps(errors))
"""
_SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped)")


def build_test(ctx: WorkContext, input: dict[str, Any]) -> WorkResult:
    """Apply the edits in ``artifacts/<taskId>/build-test/workspace/``, build, test and write report.json."""
    edits = _read_edits(ctx, input)
    ctx.check_deadline()
    home = ctx.artifacts_dir / "build-test"
    workspace = _fresh_workspace(home)
    written = apply_edits(workspace, edits)
    build = _build(ctx, home, workspace)
    tests = _test(ctx, home, workspace) if build["ok"] else _not_run("build failed")
    total = tests["passed"] + tests["failed"] + tests["errors"]
    rate = round(tests["passed"] / total, 4) if total else 0.0
    report = {"build": build, "tests": tests, "success_rate": rate, "files": written,
              "workspace": str(workspace.resolve())}
    path = home / "report.json"
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    summary = (f"build {'ok' if build['ok'] else 'failed'}; {tests['passed']} passed, {tests['failed']} failed, "
               f"{tests['errors']} errors")
    feedback = "" if rate == 1.0 else ("\n".join(build["errors"]) or tests["output_tail"])[-FEEDBACK_CHARS:]
    output = {"report_path": str(path.resolve()), "build_ok": build["ok"], "passed": tests["passed"],
              "failed": tests["failed"], "errors": tests["errors"], "success_rate": rate,
              "summary": summary, "feedback": feedback}
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


def _fresh_workspace(home: Path) -> Path:
    # A retry gets the same task id: start from nothing so the last attempt's files can't leak in.
    if home.exists():
        shutil.rmtree(home)
    workspace = home / "workspace"
    workspace.mkdir(parents=True)
    # An empty config next to the workspace stops pytest from climbing up to the host project's
    # pyproject.toml (its addopts, testpaths, plugins); a config inside the workspace still wins.
    (home / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    return workspace


def _env(home: Path) -> dict[str, str]:
    # Bytecode goes beside the workspace, not into it; host pytest plugins stay out of the sandbox.
    return scrubbed_env(PYTHONPYCACHEPREFIX=str((home / "pycache").resolve()),
                        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONHASHSEED="0")


def _build(ctx: WorkContext, home: Path, workspace: Path) -> dict[str, Any]:
    sources = sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*.py"))
    if not sources:
        return {"ok": True, "errors": [], "files": 0}
    log = home / "build.log"
    done = run_bounded([sys.executable, "-c", _COMPILE_SCRIPT, *sources], cwd=workspace, env=_env(home),
                       timeout_s=_time_left(ctx), log=log)
    _raise_if_expired(ctx, done, "build")
    output = log.read_text(encoding="utf-8", errors="replace")
    marker = next((line for line in reversed(output.splitlines()) if line.startswith("COGO-BUILD ")), None)
    if marker is None:
        # The compiler itself died (recursion, memory) on these sources: a build failure, not ours.
        errors = [f"compiler exited with {done.returncode}: {output[-FEEDBACK_CHARS:]}"]
    else:
        errors = json.loads(marker.removeprefix("COGO-BUILD "))
    return {"ok": not errors, "errors": errors, "files": len(sources)}


def _test(ctx: WorkContext, home: Path, workspace: Path) -> dict[str, Any]:
    junit, log = (home / "junit.xml").resolve(), home / "pytest.log"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           f"--rootdir={workspace.resolve()}", f"--confcutdir={workspace.resolve()}", "."]
    done = run_bounded(cmd, cwd=workspace, env=_env(home), timeout_s=_time_left(ctx), log=log)
    _raise_if_expired(ctx, done, "tests")
    output = tail(log, OUTPUT_TAIL_CHARS)
    if "No module named pytest" in output:
        raise WorkFailed(f"pytest is not installed for {sys.executable}", retryable=False,
                         code="sandbox.no_pytest")
    counts = _junit_counts(junit) or _summary_counts(output)
    return {**counts, "duration_s": round(done.duration_s, 3), "exit_code": done.returncode,
            "output_tail": output}


def _not_run(reason: str) -> dict[str, Any]:
    return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "duration_s": 0.0, "exit_code": None,
            "output_tail": f"tests not run: {reason}"}


def _time_left(ctx: WorkContext) -> float:
    ctx.check_deadline()
    return ctx.remaining_s()


def _raise_if_expired(ctx: WorkContext, done: Completed, step: str) -> None:
    if done.timed_out:
        ctx.check_deadline()
        raise TTLExpired(f"assignment {ctx.task_id}: {step} killed after {done.duration_s:.1f}s at its TTL")


def _junit_counts(path: Path) -> dict[str, int] | None:
    """Counts from pytest's JUnit XML; None when pytest wrote none (a usage error, a crash)."""
    try:
        root = ET.parse(path).getroot()
    except (FileNotFoundError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return {"passed": max(0, passed), "failed": total["failures"], "errors": total["errors"],
            "skipped": total["skipped"]}


def _summary_counts(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line ("1 failed, 2 passed in 0.1s")."""
    found = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for number, word in _SUMMARY.findall(output):
        found["errors" if word.startswith("error") else word] = int(number)
    return found


HANDLERS = {ROUTE: build_test}


def main(settings: Any, name: str) -> None:
    """Run ``cogo-build-test-worker``: serve ``code.build-test`` with this module's handler."""
    from workers.runtime import serve

    serve(settings, name=name, handlers=HANDLERS)
