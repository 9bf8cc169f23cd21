"""The pytest plugin that reports build-test's verdict through a file descriptor only the runner holds.

Loaded from the trusted install (never from the workspace) by the sandbox's runner before any
workspace code is imported. It counts outcomes from pytest's own reports and, when the session ends,
writes one JSON line to ``FD`` — a file the worker opened outside the sandbox, so nothing in the
workspace can write it by path. Standard library only: it runs inside the sandbox, where the cogo
packages are not importable. See docs/SECURITY.md for what it cannot prevent.
"""

from __future__ import annotations

import json
import os

FD: int | None = None
"""The descriptor to write the verdict to; set by the runner before pytest starts."""

_counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}


def pytest_collectreport(report):
    """A module that cannot be collected (syntax, import error) is an error."""
    if report.failed:
        _counts["errors"] += 1


def pytest_runtest_logreport(report):
    """Count each test once: its call's outcome, or an error in setup or teardown."""
    if report.when == "call":
        _counts[{"passed": "passed", "failed": "failed"}.get(report.outcome, "skipped")] += 1
    elif report.failed:
        _counts["errors"] += 1
    elif report.when == "setup" and report.skipped:
        _counts["skipped"] += 1


def pytest_sessionfinish(session, exitstatus):
    """Write the verdict once and close the descriptor, so a second writer is visible as a second line."""
    if FD is None:
        return
    line = json.dumps({"cogo_verdict": 1, "exitstatus": int(exitstatus), **_counts}) + "\n"
    os.write(FD, line.encode())
    os.close(FD)
