"""The launcher behind ``cogo up`` and ``cogo demo``: start a fleet, wait until healthy, stop it cleanly.

Every process of the table runs as its own OS process in its own process group, so that stopping the
fleet reaches whatever each process started and nothing else. The launcher starts the embedded Redis
when no broker is configured, migrates the ledger once before any process starts, and keeps an admin API
key for the fleet in ``<home>/admin.key``.

Secrets stay with the process that needs them: every child gets the fleet's settings as ``COGO_*``
variables except the secrets of :data:`SECRETS`, which only the processes named there receive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
from kombu.utils.url import maybe_sanitize_url
from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bus import ledger
from bus.errors import CogoError, ConfigError, LedgerUnavailable
from bus.settings import Settings
from coordinator import supervision_report
from ecosystem import flower
from ecosystem.child import COLOURS, Child, LogSink
from ecosystem.embedded import EmbeddedRedis
from ecosystem.net import free_port, probe_host
from ecosystem.processes import PROCESSES, Process
from ecosystem.supervision import RestartPolicy, restart_delay

SECRETS: Mapping[str, frozenset[str]] = {
    "COGO_LLM_API_KEY": frozenset({"cogo-codegen-service"}),
    "COGO_FLOWER_PASSWORD": frozenset({"flower"}),
    "COGO_JWT_HS256_SECRET": frozenset({"orchestrator-chat", "cogo-metrics-server"}),
}
"""Secret variables and the only processes of the table whose environment may carry them."""


class FleetError(CogoError):
    """The fleet did not become healthy, or a process of it died where that is a failure."""

    code = "fleet.unhealthy"


def migrate_ledger(settings: Settings) -> None:
    """Bring the ledger at ``settings.database_url`` to the newest migration.

    Raises:
        LedgerUnavailable: the database could not be reached or refused the migration.
    """
    from bus.db import make_engine
    from bus.migrate import upgrade

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    except SQLAlchemyError as exc:
        raise LedgerUnavailable(f"cannot migrate the ledger at {redact(settings.database_url)}: "
                                f"{getattr(exc, 'orig', None) or exc}") from exc
    finally:
        engine.dispose()


def check_shards(settings: Settings) -> None:
    """Refuse a shard count below the highest shard that unfinished work was written on.

    Raises:
        ConfigError: such work exists. LedgerUnavailable: the ledger cannot be read.
    """
    from bus.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            highest = ledger.highest_open_shard(conn)
    except SQLAlchemyError as exc:
        raise LedgerUnavailable(f"cannot read the ledger at {redact(settings.database_url)}: "
                                f"{getattr(exc, 'orig', None) or exc}") from exc
    finally:
        engine.dispose()
    if highest is not None and highest >= settings.shards:
        # Their queues would have no consumer: those runs would never move again.
        raise ConfigError(f"the ledger holds unfinished work on shard {highest}, but COGO_SHARDS={settings.shards}: "
                          f"start with COGO_SHARDS={highest + 1} or more (the shard count may grow, never shrink, "
                          f"while work is open)", details={"variable": "COGO_SHARDS", "highest_open_shard": highest})


BROKER_URL_FILE = "broker.url"
"""Where a running ``cogo up`` records its embedded broker's URL (mode 0600; removed when it stops)."""


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)


def recorded_broker(settings: Settings) -> Settings:
    """``settings`` with the broker of the ``cogo up`` running under the same home, when none is configured
    (unchanged when there is none: a process that needs a broker then refuses to start, ``make_celery``)."""
    if settings.broker_url:
        return settings
    try:
        url = (settings.home.resolve() / BROKER_URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return settings
    return replace(settings, broker_url=url).checked() if url else settings


def ensure_admin_key(settings: Settings) -> Path:
    """Keep a valid admin API key in ``<home>/admin.key`` (mode 0600), made on first start and reused.

    The CLI, ``cogo demo``, the tests and the bench on this machine find the fleet's key there.

    Raises:
        LedgerUnavailable: the ledger could not be reached.
    """
    from bus.db import make_engine
    from coordinator.keys import ensure_admin_key as ensure

    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            return ensure(conn, settings.home)
    except SQLAlchemyError as exc:
        raise LedgerUnavailable(f"cannot keep the admin key in the ledger at {redact(settings.database_url)}: "
                                f"{getattr(exc, 'orig', None) or exc}") from exc
    finally:
        engine.dispose()


def redact(url: str) -> str:
    """A broker or database URL with its password masked."""
    if url.startswith(("sqlite", "postgres")):
        return make_url(url).render_as_string(hide_password=True)
    return maybe_sanitize_url(url)


def process_env(process: Process, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` less every secret of :data:`SECRETS` that ``process`` is not entitled to."""
    return {k: v for k, v in base.items() if k not in SECRETS or process.name in SECRETS[k]}


def select(processes: Sequence[Process], only: Sequence[str]) -> list[Process]:
    """The processes named in ``only`` (all when empty), in table order.

    Raises:
        ConfigError: a name is not in the table.
    """
    known = {p.name for p in processes}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ConfigError(f"no process named {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return [p for p in processes if not only or p.name in only]


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(_signum, _frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Fleet:
    """A running fleet: every selected process of the table (× replicas), supervised from here.

    Usable as a context manager: ``with Fleet(settings, only=[...]) as fleet: fleet.api_url``.

    Args:
        settings: the base settings; the broker, ports and shards may be filled in by ``start``.
        only: names of the processes to start (all when empty).
        processes: the table to start from (tests pass a toy table).
        shards: overrides ``settings.shards``.
        ready_timeout_s: how long ``start`` waits for every process to be ready.
        stop_timeout_s: how long ``stop`` waits after SIGTERM before it sends SIGKILL.
        free_ports: pick free ports for the HTTP processes instead of the configured ones.
        console: where prefixed logs and the launcher's messages go.
        show_logs: print the children's output (it always goes to ``<home>/logs/``).
        env: extra environment variables for every child.
        cwd: the children's working directory (default: the current one).
        restart_policy: when ``supervise`` restarts a child that died, and when it gives up.
    """

    def __init__(self, settings: Settings, *, only: Sequence[str] = (), processes: Sequence[Process] = PROCESSES,
                 shards: int | None = None, ready_timeout_s: float = 60.0, stop_timeout_s: float = 10.0,
                 free_ports: bool = False, console: Console | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, show_logs: bool = True,
                 restart_policy: RestartPolicy = RestartPolicy()):
        self.selected = select(processes, only)
        self.settings = settings if shards is None else replace(settings, shards=shards).checked()
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.free_ports = free_ports
        self.console = console or Console()
        self.env = dict(env or {})
        self.cwd = Path(cwd or os.getcwd())
        self.broker: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self._flower_auth: tuple[str, str] | None = None
        self._reported: set[int] = set()
        self.restart_policy = restart_policy
        self.crash_looping: set[str] = set()
        self._deaths: dict[str, list[float]] = {}
        self._exits: dict[str, tuple[int | None, float]] = {}  # label -> (last exit code, wall time)
        self.restarts: dict[str, int] = {}
        self._due: dict[str, tuple[Child, float]] = {}
        shards = self.settings.shards
        self._sink = LogSink(self.console, max((len(_label(p, i, shards)) for p in self.selected
                                               for i in range(p.copies(shards))), default=8), echo=show_logs)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> Fleet:
        """Start the broker (if embedded), migrate, start every process and wait until all are ready.

        Raises:
            FleetError: a process exited during startup or was not ready by the deadline; all stopped.
            ConfigError: a configured port is already taken.
        """
        try:
            self.settings = self._resolve(self.settings)
            migrate_ledger(self.settings)
            check_shards(self.settings)
            ensure_admin_key(self.settings)
            self._spawn_all()
            self._await_ready()
            self._announce_flower()
            self._report()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every child's process group, SIGKILL what is left after the grace period, stop Redis."""
        with _signals_ignored():
            for child in self.children:
                if child.poll() is None:
                    child.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            for child in self.children:
                if child.wait(max(0.0, deadline - time.monotonic())) is None:
                    self._sink.note(f"{child.label} did not stop within {self.stop_timeout_s:g}s: killed",
                                    "yellow")
                child.kill_group()
                child.wait(5.0)
            for child in self.children:
                child.drain()
                child.ready_file.unlink(missing_ok=True)
            supervision_report.remove(self.settings.home)
            if self.broker is not None:
                (self.settings.home / BROKER_URL_FILE).unlink(missing_ok=True)
                self.broker.stop()
                self.broker = None

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- supervision ------------------------------------------------------------------------------------
    def newly_dead(self) -> list[Child]:
        """Children that exited since the last call (each reported once)."""
        dead = [c for c in self.children if c.poll() is not None and id(c) not in self._reported]
        self._reported.update(id(c) for c in dead)
        return dead

    def check_alive(self) -> None:
        """Raise FleetError if any child has exited."""
        dead = [c for c in self.children if c.poll() is not None]
        if dead:
            raise FleetError("; ".join(f"{c.label} exited with code {c.poll()}" for c in dead),
                             details={"exited": [c.label for c in dead]})

    def supervise(self, poll_s: float = 0.5) -> None:
        """Block until Ctrl-C or SIGTERM, restarting any child that dies (``tend``); the others keep running."""
        try:
            while True:
                self.tend()
                time.sleep(poll_s)
        except KeyboardInterrupt:
            self._sink.note("stopping the fleet…")

    def tend(self, now: float | None = None) -> None:
        """Notice children that died and restart each after its backoff; leave a crash-looping one stopped."""
        now = time.monotonic() if now is None else now
        changed = False
        for child in self.newly_dead():
            changed = True
            deaths = self._deaths.setdefault(child.label, [])
            deaths.append(now)
            delay = restart_delay(deaths, now, self.restart_policy)
            code = child.poll()
            self._exits[child.label] = (code, time.time())
            self._show_tail(child)
            if delay is None:
                self.crash_looping.add(child.label)
                self._sink.note(f"{child.label} exited with code {code}: it died {len(deaths)} times within "
                                f"{self.restart_policy.window_s:g}s, so it is crash-looping and stays stopped; "
                                f"see {child.log_path}", "bold red")
                continue
            self._sink.note(f"{child.label} exited with code {code}; restarting it in {delay:g}s", "bold red")
            self._due[child.label] = (child, now + delay)
        for label, (child, due) in list(self._due.items()):
            if now >= due:
                del self._due[label]
                child.respawn()
                self._reported.discard(id(child))
                self.restarts[label] = self.restarts.get(label, 0) + 1
                changed = True
                self._sink.note(f"{label} restarted (pid {child.pid})", "yellow")
        if changed:
            self._report()

    def _report(self) -> None:
        """Write what supervision knows for the API, the metrics and ``cogo status`` (``supervision_report``)."""
        processes = {}
        for child in self.children:
            code, exited_at = self._exits.get(child.label, (None, None))
            state = (supervision_report.CRASH_LOOPING if child.label in self.crash_looping else
                     supervision_report.RESTARTING if child.label in self._due else supervision_report.RUNNING)
            processes[child.label] = {"process": child.process.name, "state": state, "pid": child.pid,
                                      "restarts": self.restarts.get(child.label, 0), "last_exit_code": code,
                                      "last_exit_at": exited_at, "log": str(child.log_path)}
        supervision_report.write(self.settings.home, {
            "supervisor_pid": os.getpid(), "updated_at": time.time(), "processes": processes,
            "policy": {"crash_loop_deaths": self.restart_policy.crash_loop_deaths,
                       "window_s": self.restart_policy.window_s}})

    # -- where things are -------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        """The HTTP API's base URL."""
        return self._http_url(self.settings.api_port)

    @property
    def flower_url(self) -> str:
        """Flower's base URL."""
        return self._http_url(self.settings.flower_port)

    @property
    def metrics_url(self) -> str:
        """The metrics server's base URL."""
        return self._http_url(self.settings.metrics_port)

    @property
    def flower_auth(self) -> tuple[str, str] | None:
        """Flower's basic-auth ``(user, password)`` once started, or None when Flower is not in the fleet."""
        return self._flower_auth

    @property
    def api_key(self) -> str | None:
        """The fleet's admin API key (``<home>/admin.key``), or None when there is none."""
        from coordinator.keys import read_key_file

        return read_key_file(self.settings.home)

    def _http_url(self, port: int) -> str:
        return f"http://{probe_host(self.settings.api_host)}:{port}"

    # -- internals --------------------------------------------------------------------------------------
    def _resolve(self, settings: Settings) -> Settings:
        home = settings.home.resolve()
        settings = replace(settings, home=home, artifacts_dir=Path(settings.artifacts_dir).resolve())
        ports = {}
        for process in self.selected:
            if process.port_setting:
                port = free_port() if self.free_ports else getattr(settings, process.port_setting)
                _check_port_free(settings.api_host, port, process.port_setting)
                ports[process.port_setting] = port
        settings = replace(settings, **ports)
        if not settings.broker_url:
            self.broker = EmbeddedRedis(home).start()
            settings = replace(settings, broker_url=self.broker.url)
            write_private(home / BROKER_URL_FILE, self.broker.url)  # for `cogo process <name>` run by hand
        settings = settings.checked()
        if any(p.kind == "flower" for p in self.selected):
            self._flower_auth = flower.credentials(settings)  # generated here, before Flower reads the file
        return settings

    def _spawn_all(self) -> None:
        env = {**os.environ, **self.env, **self.settings.to_env()}
        shards = self.settings.shards
        total = sum(p.copies(shards) for p in self.selected)
        self._sink.note(f"starting {total} processes · broker {redact(self.settings.broker_url)}"
                        f"{' (embedded)' if self.broker else ''} · ledger {redact(self.settings.database_url)}")
        n = 0
        for process in self.selected:
            for index in range(process.copies(shards)):
                child = Child(process, index, _label(process, index, shards), self.settings.home,
                              COLOURS[n % len(COLOURS)])
                probe = (self.settings.api_host, getattr(self.settings, process.port_setting)) \
                    if process.port_setting else None
                own = {"COGO_SHARD": str(index)} if process.sharded and shards > 1 else {}
                child.spawn(self._argv(process), {**process_env(process, env), **own}, self.cwd, self._sink, probe)
                self.children.append(child)
                n += 1

    def _argv(self, process: Process) -> list[str]:
        argv = [sys.executable, "-m", "ecosystem.cli", "process", process.name]
        if process not in PROCESSES:
            argv += ["--entry", process.entry]
        return argv

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(self.children)
        while pending:
            exited = [c for c in pending if c.poll() is not None]
            if exited:
                self._fail(exited, {c.label: f"exited with code {c.poll()} during startup" for c in exited})
            for child in [c for c in pending if c.is_ready()]:
                self._sink.note(f"✓ {child.label} ready", "green")
                pending.remove(child)
            if pending and time.monotonic() >= deadline:
                self._fail(pending, {c.label: f"not ready after {self.ready_timeout_s:g}s" for c in pending})
            if pending:
                time.sleep(0.1)

    def _announce_flower(self) -> None:
        """Say where Flower is and how to log in; have it inspect the workers now that all of them are up."""
        if self._flower_auth is None:
            return
        user, password = self._flower_auth
        try:  # Flower inspected the workers when it started, before they were up: once more, now
            httpx.get(f"{self.flower_url}/api/workers", params={"refresh": "1"}, auth=(user, password),
                      timeout=10.0)
        except httpx.HTTPError:
            pass  # only the first view of its Workers list is the poorer for it
        source = "COGO_FLOWER_PASSWORD" if self.settings.flower_password else flower.password_path(self.settings)
        self._sink.note(f"flower: {self.flower_url}  (user {user}, password {password}; from {source})")

    def _fail(self, culprits: list[Child], reasons: dict[str, str]) -> None:
        for child in culprits:
            self._sink.note(f"✗ {child.label} {reasons[child.label]}", "bold red")
            self._show_tail(child)
        raise FleetError("the fleet did not become healthy: " +
                         "; ".join(f"{label} {why}" for label, why in reasons.items()),
                         details={"processes": reasons})

    def _show_tail(self, child: Child, lines: int = 20) -> None:
        if child.poll() is not None:
            child.drain(timeout_s=1.0)
        self._sink.note(f"── last lines of {child.label} ({child.log_path}) ──", "dim")
        for text in list(child.tail)[-lines:] or ["(no output)"]:
            self._sink.note(f"   {text}", "")


def _label(process: Process, index: int, shards: int) -> str:
    return process.name if process.copies(shards) == 1 else f"{process.name}-{index}"


def _check_port_free(host: str, port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"port {port} ({'COGO_' + setting.upper()}) on {host} is already in use "
                              f"({exc.strerror}); stop what listens there or choose another port",
                              details={"variable": "COGO_" + setting.upper(), "port": port}) from exc
