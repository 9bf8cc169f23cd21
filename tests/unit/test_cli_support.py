"""The CLI's key: given, or the local admin key — and that one only for an API on this machine."""

from __future__ import annotations

import pytest

from coordinator.keys import ADMIN_KEY_FILE
from ecosystem.cli_support import api_key_for


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COGO_HOME", str(tmp_path))
    (tmp_path / ADMIN_KEY_FILE).write_text("cogo_kadmin_local\n")
    return tmp_path


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.9.9.9:1", "http://localhost:8080",
                                 "http://[::1]:8080"])
def test_an_api_on_this_machine_gets_the_local_admin_key(home, url):
    assert api_key_for(None, url) == "cogo_kadmin_local"


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080", "https://cogo.example.com", "http://localhost.evil:1",
                                 "http://0.0.0.0:8080"])
def test_the_local_admin_key_is_never_sent_to_another_host(home, url):
    assert api_key_for(None, url) is None
    assert api_key_for("given", url) == "given"  # a key the user names goes where the user sends it
