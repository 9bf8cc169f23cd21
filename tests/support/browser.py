"""A real headless browser for tests: Debian's Chromium driven by Playwright.

Locally a test that needs it skips when Chromium (``/usr/bin/chromium``) or Playwright is missing; under ``CI=true``
it fails instead (``.ci/run`` installs Chromium). Screenshots go to ``$COGO_SCREENSHOTS``, else
``test-artifacts/screenshots/`` at the repository's root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import in_ci

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
"""Headless, as root in a container, and quiet: nothing but the page under test reaches the network."""
ROOT = Path(__file__).resolve().parents[2]


def screenshots_dir() -> Path:
    """Where screenshots are kept (made if missing)."""
    path = Path(os.environ.get("COGO_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unavailable(why: str) -> None:
    if in_ci():
        pytest.fail(f"{why} (CI=true: the browser tests must run; .ci/run installs chromium)")
    pytest.skip(why)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageProblems:
    """Uncaught errors and console errors of a page (a failed request the page handles itself is not one)."""

    def __init__(self, page: Any):
        self.found: list[str] = []
        page.on("pageerror", lambda error: self.found.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.found.append(f"console: {message.text}")
