"""The dashboard in a real browser (headless Chromium, Playwright) against a real fleet.

One fleet for the module: the API, brain, dispatcher, reclaimer and the codegen and build-test workers, on a Redis of
its own and the default SQLite ledger; the built-in flows use the deterministic local model. Every page is
screenshotted into ``$COGO_SCREENSHOTS`` (default ``test-artifacts/screenshots/``).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from rich.console import Console

from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.browser import PageProblems, chromium, screenshots_dir
from tests.support.owned import OwnedRedis
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

WORKERS = ["cogo-codegen-service", "cogo-build-test-worker", "cogo-metrics-server"]
"""The workers of the upgrade and codegen flows, and the metrics server (it folds spend into the counters the spend
page reads)."""
TENANT = "acme"
OTHER = "zeta"
SPEC = "a function add(a, b) that returns the sum of a and b"
LONG_MS = 120_000
"""How long the page may take to show what a run does (a build-test step runs pytest in a sandbox)."""


@dataclass
class Dashboard:
    fleet: Fleet
    browser: Any

    @property
    def url(self) -> str:
        return self.fleet.api_url

    def api(self, method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key or self.fleet.api_key}"}
        return httpx.request(method, f"{self.url}{path}", headers=auth, timeout=30, **kwargs)

    def submit(self, intent: str, payload: dict, tenant: str = TENANT) -> str:
        answer = self.api("POST", "/api/intents", json={"tenant": tenant, "intent": intent, "payload": payload})
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def wait_ended(self, run_id: str, timeout: float = 120) -> dict:
        return wait_until(lambda: (r := self.api("GET", f"/api/runs/{run_id}").json())["status"] in
                          ("completed", "failed", "cancelled") and r, timeout=timeout, interval=0.3,
                          message=f"run {run_id} to end")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Iterator[Dashboard]:
    with chromium() as browser:
        root = tmp_path_factory.mktemp("dashboard")
        broker = OwnedRedis(root / "broker").start()
        try:
            settings = fleet_settings(root, broker_url=broker.url, lease_s=30.0, stale_s=15.0)
            with Fleet(settings, only=[*CORE, *WORKERS], processes=TABLE, free_ports=True,
                       env={"PYTHONUNBUFFERED": "1"}, console=Console(quiet=True), show_logs=False) as fleet:
                yield Dashboard(fleet, browser)
        finally:
            broker.stop()


@pytest.fixture
def open_page(dashboard):
    """``open_page(key)``: a fresh tab (its own session storage) signed in with ``key`` through the URL fragment."""
    contexts, problems = [], []

    def open_with(key: str | None = None, *, sign_in: bool = True, path: str | None = None):
        context = dashboard.browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        problems.append(PageProblems(page))
        if path is not None:
            page.goto(f"{dashboard.url}{path}")
        elif sign_in:
            page.goto(f"{dashboard.url}/ui/#key={key or dashboard.fleet.api_key}")
            page.wait_for_selector("#nav a")
        else:
            page.goto(f"{dashboard.url}/ui/")
        return page

    yield open_with
    for context in contexts:
        context.close()
    assert [p for found in problems for p in found.found] == []


def shot(page, name: str) -> None:
    page.screenshot(path=str(screenshots_dir() / f"{name}.png"), full_page=True)


def settled(page) -> None:
    """Wait until no part of the page is still loading."""
    wait_until(lambda: page.locator("#main .loading").count() == 0, timeout=30, message="the page to load")


def mark(page) -> None:
    """A marker in the window: it survives only if the page is never reloaded."""
    page.evaluate("window.__cogoMarker = 'never reloaded'")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__cogoMarker") == "never reloaded"


def node_state(page, node: str) -> str:
    return page.get_attribute(f"g.node[data-node='{node}']", "data-state")


def the_process(fleet: Fleet, name: str) -> int:
    [child] = [c for c in fleet.children if c.process.name == name]
    return child.pid


# -- the tests ----------------------------------------------------------------------------------------------------
def test_a_fragment_key_signs_in_leaves_the_address_bar_and_the_overview_shows_the_fleet(dashboard, open_page):
    page = open_page()
    assert "key=" not in page.url and page.url.endswith("/ui/#/")
    assert page.evaluate("sessionStorage.getItem('cogo.key')") == dashboard.fleet.api_key
    assert page.evaluate("document.referrer") == ""
    assert "Signed in from a link as key:admin (cogo up) (admin: every tenant)" in page.inner_text("#banner")
    page.wait_for_selector("[data-card=health] table.processes")
    settled(page)
    health = page.inner_text("[data-card=health]")
    assert "orchestrator-chat" in health and "cogo-codegen-service" in health
    assert page.locator("#live.live").count() == 1  # the stream is open
    assert "Decision quality" in page.inner_text("[data-card=quality]")
    targets = page.eval_on_selector_all("[data-card=targets] tbody tr", "rows => rows.map(r => r.dataset.id)")
    assert sorted(targets) == ["CogoBusFailureRateHigh", "CogoDecisionQualityLow", "CogoQueueWaitHigh"]
    assert page.locator("[data-card=targets] .error-box").count() == 0
    page.click("#banner button")
    shot(page, "overview")


def test_an_upgrade_started_on_the_page_reaches_its_approval_live_and_is_approved_there(dashboard, open_page):
    page = open_page()
    codegen = the_process(dashboard.fleet, "cogo-codegen-service")
    os.killpg(codegen, signal.SIGSTOP)  # the run waits at its first step until the page is watching it
    try:
        page.click("#nav a[data-page=runs]")
        page.click("#new-run-button")
        page.select_option("#new-intent", "upgrade")
        page.fill("#new-payload", json.dumps({"proposal": SPEC}))
        page.click("#start-form button[type=submit]")
        page.wait_for_url(re.compile(r".*#/runs/[0-9a-f-]{36}$"))
        run_id = page.url.rsplit("/", 1)[1]
        mark(page)
        page.wait_for_selector("g.node[data-node='propose'][data-state='running']")
        assert page.locator("[data-approval]").count() == 0
        assert node_state(page, "approve") == "pending"
    finally:
        os.killpg(codegen, signal.SIGCONT)
    page.wait_for_selector("[data-approval] button[data-action='approve']", timeout=LONG_MS)
    assert_not_reloaded(page)
    assert node_state(page, "approve") == "waiting" and node_state(page, "check") == "done"
    assert "waits for a person" in page.inner_text("#explain-summary")
    settled(page)
    shot(page, "run-waiting-for-approval")

    approvals = open_page()  # another tab: the approvals page lists it
    approvals.click("#nav a[data-page=approvals]")
    approvals.wait_for_selector(f"[data-run='{run_id}'] button[data-action='approve']")
    assert "Promote this upgrade?" in approvals.inner_text(f"[data-run='{run_id}']")
    shot(approvals, "approvals")

    page.fill("[data-approval] input[name=comment]", "ship it")
    page.click("[data-approval] button[data-action='approve']")
    page.wait_for_selector("h1 .badge.st-completed", timeout=LONG_MS)
    page.wait_for_selector("g.node[data-node='promoted'][data-state='done']")
    assert_not_reloaded(page)
    assert node_state(page, "rollback") == "skipped"
    run = dashboard.api("GET", f"/api/runs/{run_id}").json()
    assert run["status"] == "completed" and run["output"]["promoted"] is True
    assert run["output"]["approval"] == {"approved": True, "by": "key:admin (cogo up)", "comment": "ship it"}
    assert '"promoted": true' in page.inner_text("#run-output")
    settled(page)
    shot(page, "run-completed")
    approvals.wait_for_selector("#approvals-list .empty")  # the other tab saw it leave, live
    assert "No pending approvals" in approvals.inner_text("#approvals-list")


def test_a_codegen_runs_gate_shows_its_report_inline(dashboard, open_page):
    run_id = dashboard.submit("codegen", {"spec": SPEC})
    assert dashboard.wait_ended(run_id)["status"] == "completed"
    page = open_page()
    row = page.locator("table.gates tr", has=page.locator(f"a[title='{run_id}']"))
    row.locator("button[data-artifact]").click()
    page.wait_for_selector("dialog.modal .facts")
    report = page.inner_text("dialog.modal")
    assert "report.json" in report and "Success rate" in report and "100.0 %" in report
    raw = json.loads(page.text_content("dialog.modal pre[data-raw]"))
    assert raw["success_rate"] == 1.0 and raw["tests"]["failed"] == 0
    shot(page, "gate-report")
    page.keyboard.press("Escape")

    page.goto(f"{dashboard.url}/ui/#/runs/{run_id}")
    page.wait_for_selector("g.node[data-node='gate'][data-state='done']")
    page.click("g.node[data-node='gate']")
    page.wait_for_selector("[data-node-detail='gate'] .evidence button")
    assert "Judged the result of test" in page.inner_text("#node-detail")
    page.click("[data-node-detail='gate'] .evidence button")
    page.wait_for_selector("dialog.modal .facts")
    assert "report.json" in page.inner_text("dialog.modal")
    page.keyboard.press("Escape")
    page.click("g.node[data-node='generate']")
    page.click("#node-detail .node-tokens button[data-artifact]")
    page.wait_for_selector("dialog.modal section.file")
    edits = page.inner_text("dialog.modal")
    assert "edits.json" in edits and "add.py" in edits and "def add(a, b)" in edits
    shot(page, "run-codegen-edits")


def test_a_tenants_key_sees_only_its_tenant_and_no_admin_page(dashboard, open_page):
    made = dashboard.api("POST", "/api/keys", json={"tenant": TENANT, "name": "acme-operator",
                                                    "scopes": ["runs:read", "intents:write", "approvals:decide"]})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    theirs = dashboard.submit("echo", {"note": "zeta's secret"}, tenant=OTHER)
    mine = dashboard.submit("echo", {"note": "acme's own"})
    for run_id in (theirs, mine):
        dashboard.wait_ended(run_id)
    page = open_page(sign_in=False)
    page.wait_for_selector("#signin")
    shot(page, "sign-in")
    page.fill("#key", key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#nav a")
    assert page.locator("#nav a[data-page=agents]").count() == 0
    assert page.locator("#nav a[data-page=circuits]").count() == 0
    page.click("#nav a[data-page=runs]")
    page.wait_for_selector(f"table.runs tr[data-id='{mine}']")
    listed = page.eval_on_selector_all("table.runs tbody tr", "rows => rows.map(r => r.dataset.id)")
    assert mine in listed and theirs not in listed
    assert OTHER not in page.inner_text("#main")
    shot(page, "tenant-runs")
    page.goto(f"{dashboard.url}/ui/#/runs/{theirs}")
    page.wait_for_selector(".error-box code")
    assert page.inner_text("h1") == "Run not found"
    assert page.inner_text(".error-box code") == "run.unknown"
    assert "zeta's secret" not in page.inner_text("#main") and OTHER not in page.inner_text("#main")
    shot(page, "tenant-run-not-found")
    page.goto(f"{dashboard.url}/ui/#/agents")
    page.wait_for_selector(".notice")
    assert "needs an admin key" in page.inner_text(".notice")
    page.click("#nav a[data-page=overview]")
    page.wait_for_selector("[data-card=health] .notice")
    assert "Fleet health needs an admin key" in page.inner_text("[data-card=health]")


def test_a_link_with_another_key_asks_before_it_replaces_the_session_and_the_stream(dashboard, open_page):
    """Anyone can send a link that signs a browser in as them: with a key signed in, the page says whose key the
    link holds and asks; switching ends the old key's page and stream."""
    made = dashboard.api("POST", "/api/keys", json={"tenant": TENANT, "name": "acme-linked", "scopes": ["runs:read"]})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    page = open_page()
    page.wait_for_selector("#live.live")
    streams = []
    page.on("request", lambda r: streams.append(r) if "/api/stream" in r.url else None)

    def follow_link() -> None:
        page.evaluate("(key) => { window.location.hash = `#key=${encodeURIComponent(key)}`; }", key)
        page.wait_for_selector("#switch-key")
        assert "key=" not in page.url
        assert page.inner_text("#switch-new") == "key:acme-linked (tenant acme)"
        assert page.inner_text("#switch-now") == "key:admin (cogo up) (admin: every tenant)"
        assert page.evaluate("sessionStorage.getItem('cogo.key')") == dashboard.fleet.api_key

    follow_link()
    shot(page, "switch-key")
    page.click("#switch-stay")
    page.wait_for_selector("[data-card=health] table.processes")
    assert page.evaluate("sessionStorage.getItem('cogo.key')") == dashboard.fleet.api_key
    follow_link()
    page.click("#switch-go")
    wait_until(lambda: page.inner_text("#who").startswith("tenant acme"), timeout=30, message="the new key")
    assert "Signed in from a link as key:acme-linked (tenant acme)" in page.inner_text("#banner")
    assert page.evaluate("sessionStorage.getItem('cogo.key')") == key
    assert page.locator("#nav a[data-page=agents]").count() == 0
    wait_until(lambda: any(r.all_headers().get("authorization") == f"Bearer {key}" for r in streams), timeout=30,
               message="the stream reopened with the new key")
    page.wait_for_selector("#live.live")


def test_a_malformed_link_or_route_breaks_nothing(dashboard, open_page):
    page = open_page(path="/ui/#key=%")
    page.wait_for_selector("#signin")
    assert "key=" not in page.url and page.evaluate("sessionStorage.getItem('cogo.key')") is None
    assert "malformed" in page.inner_text("#banner")
    page = open_page()
    page.evaluate("window.location.hash = '#/runs/%zz'")
    page.wait_for_selector(".error-box code")
    assert page.inner_text("h1") == "Run not found"  # and no uncaught error (checked when the test ends)


PAGES = ["overview", "runs", "approvals", "spend", "agents", "circuits", "dead-letters"]


def test_every_page_renders_without_an_error_and_the_run_list_updates_live(dashboard, open_page):
    spender = f"spender-{os.getpid()}"
    metered = dashboard.submit("flow-codegen", {"spec": SPEC}, tenant=spender)  # one model call: metered spend
    assert dashboard.wait_ended(metered)["status"] == "completed"
    page = open_page()
    page.click("#banner button")  # "signed in from a link as …": read, dismissed
    assert page.locator("#banner").is_hidden()
    mark(page)
    for name in PAGES:
        page.click(f"#nav a[data-page='{name}']")
        page.wait_for_selector(f"#nav a.active[data-page='{name}']")
        settled(page)
        if name == "spend":  # this test's run, metered and folded by the metrics server
            page.wait_for_selector(f"table.spend-table td:text-is('{spender}')", timeout=LONG_MS)
        errors = page.locator("#main .error-box")
        assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
        shot(page, f"page-{name}")
    page.click("#nav a[data-page=runs]")
    settled(page)
    run_id = dashboard.submit("echo", {"note": "live"})
    page.wait_for_selector(f"table.runs tr[data-id='{run_id}'] .badge.st-completed", timeout=LONG_MS)
    assert_not_reloaded(page)
