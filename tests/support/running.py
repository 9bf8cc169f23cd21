"""A command left running as its own process, its output collected by a thread (so it never blocks)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from pathlib import Path

import psutil


class Running:
    """``argv`` started with ``env`` (and ``cwd``); ``output`` is what it printed so far, stdout and stderr."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        """Every line printed so far."""
        return "\n".join(self.lines)

    def wait(self, timeout_s: float) -> int:
        """Its exit code, once it exits (``subprocess.TimeoutExpired`` past ``timeout_s``)."""
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code

    def kill(self, grace_s: float = 20.0) -> None:
        """Stop it and everything it started, if it still runs: SIGTERM first (a ``cogo up`` stops its fleet),
        SIGKILL past ``grace_s``, then any process it left behind — a failed test must not leak a fleet."""
        if self.proc.poll() is not None:
            return
        descendants = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for orphan in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                orphan.kill()
