"""API keys on the ledger: the embedded default's admin key, and ``cogo keys`` as an operator uses it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from bus.db import make_engine
from bus.migrate import upgrade
from coordinator import keys


def test_the_admin_key_is_made_once_kept_private_and_replaced_when_revoked(sqlite_engine, tmp_path):
    with sqlite_engine.begin() as conn:
        path = keys.ensure_admin_key(conn, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = keys.read_key_file(tmp_path)
    with sqlite_engine.begin() as conn:
        assert keys.authenticate(conn, first).is_admin
        keys.ensure_admin_key(conn, tmp_path)
    assert keys.read_key_file(tmp_path) == first
    with sqlite_engine.begin() as conn:
        keys.revoke_key(conn, first.split("_")[1])
        keys.ensure_admin_key(conn, tmp_path)
    second = keys.read_key_file(tmp_path)
    assert second != first
    with sqlite_engine.begin() as conn:
        assert keys.authenticate(conn, second).is_admin


def _cogo(home, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGO_")}
    env.update(COGO_HOME=str(home), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "ecosystem.cli", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_cogo_keys_creates_lists_and_revokes_on_the_ledger(tmp_path):
    engine = make_engine(f"sqlite:///{(tmp_path / 'cogo.db').resolve()}")
    upgrade(engine)
    made = _cogo(tmp_path, "create", "--tenant", "acme", "--scope", "runs:read", "--scope", "intents:write",
                 "--name", "ci")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    with engine.connect() as conn:
        who = keys.authenticate(conn, key)
    assert (who.tenant, who.scopes) == ("acme", frozenset({"runs:read", "intents:write"}))
    listed = _cogo(tmp_path, "list")
    key_id = key.split("_")[1]
    assert key_id in listed.stdout and "acme" in listed.stdout and key not in listed.stdout
    bad = _cogo(tmp_path, "create", "--tenant", "acme", "--scope", "root")
    assert bad.returncode != 0 and "scope.unknown" in bad.stderr and "Traceback" not in bad.stderr
    assert _cogo(tmp_path, "revoke", key_id).returncode == 0
    again = _cogo(tmp_path, "revoke", key_id)
    assert again.returncode == 1 and "key.unknown" in again.stderr
    engine.dispose()
