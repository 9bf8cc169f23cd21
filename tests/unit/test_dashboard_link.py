"""``cogo up`` names the dashboard: the summary it prints (in a log too) gives the plain URL and the file that holds
the admin key, never the key; the link it prints on a terminal carries the key in the URL's fragment (it signs the
browser in). Checked on a real (not started) ``Fleet`` over real settings and a real admin key."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import unquote

from rich.console import Console

from bus.db import make_engine
from bus.migrate import upgrade
from bus.settings import Settings
from coordinator.keys import ensure_admin_key, read_key_file
from ecosystem import render
from ecosystem.launcher import Fleet


def _printed(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(renderable, soft_wrap=True)
    return out.getvalue()


def _fleet(home: Path, *, only=(), with_key: bool = True) -> Fleet:
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ledger.db'}").checked()
    if with_key:
        home.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.database_url)
        upgrade(engine)
        with engine.begin() as conn:
            ensure_admin_key(conn, home)
        engine.dispose()
    return Fleet(settings, only=only, console=Console(file=io.StringIO()))


def test_the_summary_names_the_dashboard_and_the_key_file_never_the_key(tmp_path):
    fleet = _fleet(tmp_path / "home")
    key = read_key_file(fleet.settings.home)
    assert key and key == fleet.api_key
    shown = _printed(render.fleet_summary(fleet))
    assert f"Dashboard  {fleet.api_url}/ui/" in shown
    assert f"sign in with the key in {fleet.settings.home / 'admin.key'}" in shown
    assert key not in shown and "#key=" not in shown


def test_the_link_carries_the_key_in_its_fragment_only(tmp_path):
    fleet = _fleet(tmp_path / "home")
    key = fleet.api_key
    link = render.dashboard_link(fleet).plain
    url = link.split()[1]
    assert url.startswith(f"{fleet.api_url}/ui/#key=")
    assert unquote(url.split("#key=", 1)[1]) == key and "?" not in url.split("#")[0]
    assert render.dashboard_url(fleet, "a b#c&d").endswith("/ui/#key=a%20b%23c%26d")


def test_no_link_without_a_key_or_without_the_api(tmp_path):
    assert render.dashboard_link(_fleet(tmp_path / "nokey", with_key=False)) is None
    no_api = _fleet(tmp_path / "noapi", only=["cogo-orchestrator-brain"])
    assert no_api.api_key and render.dashboard_link(no_api) is None
    assert "Dashboard" not in _printed(render.fleet_summary(no_api))
