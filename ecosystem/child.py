"""One OS process of a fleet: how it is started, where its output goes, and how it says it is ready."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console
from rich.text import Text

from bus.readiness import READY_ENV
from ecosystem.net import probe_host
from ecosystem.processes import Process

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta",
           "bright_green", "bright_yellow", "bright_blue")
TAIL_LINES = 40


class LogSink:
    """Prints every child's lines with a coloured, aligned ``name |`` prefix; safe across threads."""

    def __init__(self, console: Console, width: int, *, echo: bool = True):
        self.console = console
        self.width = width
        self.echo = echo
        self._lock = threading.Lock()

    def line(self, label: str, colour: str, text: str) -> None:
        """Print one line of a child's output (unless ``echo`` is off: it is still in the log file)."""
        if not self.echo:
            return
        with self._lock:
            self.console.print(Text.assemble((f"{label:<{self.width}} | ", colour), text),
                               soft_wrap=True, highlight=False)

    def note(self, text: str, style: str = "bold") -> None:
        """Print one line of the launcher's own."""
        with self._lock:
            self.console.print(Text(text, style=style), soft_wrap=True, highlight=False)


class Child:
    """One running copy of a process of the table.

    Args:
        process: the table entry.
        index: which replica (0-based).
        label: the name shown in the log prefix (``name`` or ``name-<index>``).
        home: the fleet's home; ready files go to ``<home>/run/``, logs to ``<home>/logs/``.
        colour: the prefix colour.
    """

    def __init__(self, process: Process, index: int, label: str, home: Path, colour: str):
        self.process = process
        self.index = index
        self.label = label
        self.colour = colour
        self.ready_file = home / "run" / f"{process.name}-{index}.ready"
        self.log_path = home / "logs" / f"{label}.log"
        self.probe_url: str | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._popen: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None
        self._ready = False

    @property
    def pid(self) -> int | None:
        """The process id, once spawned."""
        return self._popen.pid if self._popen else None

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or before it was spawned)."""
        return self._popen.poll() if self._popen else None

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, sink: LogSink,
              http_probe: tuple[str, int] | None) -> None:
        """Start it in its own process group, with output pumped to ``sink`` and its log file."""
        self._spawned_with = (argv, env, cwd, sink, http_probe)
        self._ready = False
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if http_probe:
            host, port = http_probe
            path = "/healthcheck" if self.process.kind == "flower" else "/healthz"
            self.probe_url = f"http://{probe_host(host)}:{port}{path}"
        child_env = {**env, READY_ENV: str(self.ready_file), "PYTHONUNBUFFERED": "1"}
        self._popen = subprocess.Popen(list(argv), env=child_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
        log = self.log_path.open("a", encoding="utf-8", buffering=1)
        self._pump = threading.Thread(target=self._pump_lines, args=(self._popen.stdout, log, sink),
                                      name=f"log-{self.label}", daemon=True)
        self._pump.start()

    def respawn(self) -> None:
        """Start it again as it was first started (after it died); the old output is drained first."""
        self.drain()
        self.spawn(*self._spawned_with)

    def is_ready(self) -> bool:
        """Whether it has said it is ready: ``/healthz`` answers 200 (http), else its ready file exists."""
        if self._ready:
            return True
        if self.probe_url:
            try:
                self._ready = httpx.get(self.probe_url, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                self._ready = False
        else:
            self._ready = self.ready_file.exists()
        return self._ready

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to its process group; False when the group has no process left."""
        if self._popen is None:
            return False
        try:
            os.killpg(self._popen.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for it to exit; its exit code, or None if it still runs."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def drain(self, timeout_s: float = 2.0) -> None:
        """Wait for the output pump to reach the end of the child's output."""
        if self._pump is not None:
            self._pump.join(timeout=timeout_s)

    def kill_group(self) -> None:
        """SIGKILL whatever is left in its process group (the leader, or helpers it started)."""
        self.signal_group(signal.SIGKILL)

    def _pump_lines(self, stream: IO[bytes], log: IO[str], sink: LogSink) -> None:
        try:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self.tail.append(text)
                log.write(text + "\n")
                sink.line(self.label, self.colour, text)
        finally:
            stream.close()
            log.close()
