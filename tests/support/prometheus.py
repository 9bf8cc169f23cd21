"""Reading what Prometheus would read: a scrape's samples (with Prometheus's own parser) and ``promtool``, which
a test skips without locally and fails without under ``CI=true`` (``.ci/run`` installs Debian's ``prometheus``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import in_ci

Samples = dict[str, dict[tuple, float]]
"""Sample name → its sorted ``(label, value)`` pairs → its value."""


def samples(text: str) -> Samples:
    """Every sample of a scrape's text, parsed with Prometheus's parser."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def promtool() -> str:
    """The path of ``promtool``: skip the test when it is missing, or fail it under ``CI=true``."""
    found = shutil.which("promtool")
    if found is None:
        if in_ci():
            pytest.fail("promtool is missing (CI=true: .ci/run installs Debian's prometheus package)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def run_promtool(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    """``promtool <args>``; fails the test with its output unless it succeeds. Returns what it printed."""
    done = subprocess.run([promtool(), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def check_metrics(text: str) -> None:
    """``promtool check metrics`` accepts a scrape's text without a single remark."""
    said = run_promtool("check", "metrics", stdin=text)
    assert not said.strip(), said
