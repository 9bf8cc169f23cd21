"""Confining generated code: namespaces, a read-only view of the host, a non-root uid and rlimits.

``Sandbox.from_settings(settings)`` picks the mechanism from ``COGO_SANDBOX``:

- ``unshare`` (util-linux, what a fresh Linux machine has): new mount, PID, network, IPC, UTS and
  cgroup namespaces; a tmpfs root holding read-only binds of the system and Python directories, a
  fresh ``/proc``, a minimal ``/dev`` and ``/etc``, a private ``/tmp`` and the workspace; then
  ``pivot_root``, and ``setpriv`` to a uid of its own with no capabilities and ``no_new_privs``.
- ``bwrap`` (bubblewrap): the same view built by bubblewrap.
- ``auto``: bubblewrap when installed and usable, else ``unshare``; refuse when neither confines.
- ``unconfined``: runs bare, with the rlimits only. The operator accepts the risk; it is logged loudly.

Whatever the mechanism, a trusted bootstrap (``BOOT``, run with ``python -I -B``) sets the rlimits
before any generated code runs. Every mode but ``unconfined`` is probed — a real sandboxed process
checks what it can see — once per process and configuration; a mode that does not confine raises
``sandbox.unavailable`` (fail closed). docs/SECURITY.md states what this protects against and what not.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.errors import WorkFailed
from workers.namespaces import (
    SETUP_FAILED,
    TOOLS,
    TRUSTED,
    WORKSPACE,
    Layout,
    bwrap_command,
    host_binds,
    prepare,
    unshare_command,
)

log = logging.getLogger(__name__)

MODES = ("auto", "bwrap", "unshare", "unconfined")
SANDBOX_UID_BASE = 1_000_000_000
"""Sandboxed code runs as ``SANDBOX_UID_BASE + <worker pid>``: a uid no other process has, so the
per-uid process limit counts only this sandbox's processes and no signal reaches anything else."""
PROBE_TIMEOUT_S = 60.0

# Runs first in every sandboxed Python: rlimits equal soft and hard, so the code cannot raise them back.
BOOT = """
import resource, sys
mem, procs, cpu, fsize = (int(x) for x in sys.argv[1].split(","))
for limit, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_NPROC, procs), (resource.RLIMIT_FSIZE, fsize),
                     (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 1024)):
    resource.setrlimit(limit, (value, value))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
program, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
exec(compile(program, "<cogo-sandbox>", "exec"), {"__name__": "__main__"})
"""

# Checks from the inside that the sandbox holds; prints one JSON line.
_PROBE = """
import json, os, socket, sys
canary, worker_pid = sys.argv[1], int(sys.argv[2])
status = open("/proc/self/status").read()
caps = int(next(l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")), 16)
try:
    open(canary).read()
    canary_hidden = False
except OSError:
    canary_hidden = True
import pytest  # noqa: F401  the runner needs it readable
print("COGO-PROBE " + json.dumps({
    "uid": os.getuid(), "caps": caps, "canary_hidden": canary_hidden,
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
    "host_pid_visible": worker_pid > 10 and os.path.exists(f"/proc/{worker_pid}"),
    "root_writable": os.access("/", os.W_OK)}))
"""


@dataclass(frozen=True)
class Limits:
    """What sandboxed code may use, per process (memory as address space, CPU as CPU time)."""

    memory_mb: int = 1024
    max_procs: int = 64
    cpu_s: int = 60
    file_mb: int = 64

    def boot_arg(self) -> str:
        """The limits as ``BOOT`` reads them: bytes of address space, processes, CPU seconds, file bytes."""
        return f"{self.memory_mb << 20},{self.max_procs},{self.cpu_s},{self.file_mb << 20}"


@dataclass(frozen=True)
class Completed:
    """What a sandboxed command did: its exit code (None when killed on timeout) and its duration."""

    returncode: int | None
    duration_s: float
    timed_out: bool


def unavailable(reason: str, mode: str) -> WorkFailed:
    """The refusal when ``mode`` cannot confine here; it names the setting that accepts the risk."""
    return WorkFailed(f"the build-test sandbox (COGO_SANDBOX={mode}) cannot confine generated code here: {reason}. "
                      "Install bubblewrap or util-linux unshare with namespace support, or set "
                      "COGO_SANDBOX=unconfined to run generated code without isolation (you accept the risk).",
                      retryable=False, code="sandbox.unavailable", details={"mode": mode, "reason": reason[:500]})


def sandbox_env(home: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of sandboxed code: built from nothing, so no secret of the worker's can leak."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp" if home == "/tmp" else home,
           "LANG": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.update(extra or {})
    return env


class Sandbox:
    """Runs Python programs confined as ``mode`` says, under ``limits``."""

    def __init__(self, requested: str, limits: Limits, *, masks: tuple[Path, ...] = ()):
        if requested not in MODES:
            raise ValueError(f"unknown sandbox mode {requested!r}")
        self.requested, self.limits = requested, limits
        self.masks = tuple(m.resolve() for m in masks)
        """Host paths hidden even when under a directory the sandbox binds (COGO_HOME, artifacts)."""
        self._mode: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> Sandbox:
        """The sandbox ``settings`` ask for (shared per configuration, so the probe runs once)."""
        limits = Limits(settings.sandbox_memory_mb, settings.sandbox_max_procs, settings.sandbox_cpu_s,
                        settings.sandbox_file_mb)
        masks = tuple(Path(p) for p in (settings.home, settings.artifacts_dir) if str(p) not in ("", "."))
        key = (settings.sandbox, limits, tuple(m.resolve() for m in masks))
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls(settings.sandbox, limits, masks=masks)
            return _SHARED[key]

    @property
    def mode(self) -> str:
        """The mechanism in use (``bwrap``, ``unshare`` or ``unconfined``); probes on first use.

        Raises:
            WorkFailed: ``sandbox.unavailable`` when the requested mode cannot confine here.
        """
        with self._lock:
            if self._mode is None:
                self._mode = self._choose()
            return self._mode

    def forget(self) -> None:
        """Probe again on next use (after a run found the sandbox broken)."""
        with self._lock:
            self._mode = None

    def _choose(self) -> str:
        if self.requested == "unconfined":
            log.warning("COGO_SANDBOX=unconfined: generated code runs WITHOUT isolation; it can read this "
                        "host's files and secrets and reach its network. Use only where that is acceptable.")
            return "unconfined"
        candidates = {"auto": ["bwrap", "unshare"], "bwrap": ["bwrap"], "unshare": ["unshare"]}[self.requested]
        reasons = []
        for mode in candidates:
            reason = self._probe(mode)
            if reason is None:
                log.info("build-test sandbox: %s (requested %s)", mode, self.requested)
                return mode
            reasons.append(f"{mode}: {reason}")
        raise unavailable("; ".join(reasons), self.requested)

    def _probe(self, mode: str) -> str | None:
        """None when ``mode`` confines here, else why not."""
        missing = [tool for tool in TOOLS[mode] if shutil.which(tool) is None]
        if missing:
            return f"{', '.join(missing)} not found on PATH"
        with tempfile.TemporaryDirectory(prefix="cogo-probe-") as tmp:
            home = Path(tmp)
            canary = home / "canary"
            canary.write_text("secret", encoding="utf-8")
            layout = prepare(home)
            log_path = home / "probe.log"
            try:
                done = self._run(mode, _PROBE, [str(canary), str(os.getpid())], layout=layout, log=log_path,
                                 timeout_s=PROBE_TIMEOUT_S)
            except OSError as exc:
                return f"cannot start: {exc}"
            output = log_path.read_text(encoding="utf-8", errors="replace")
            line = next((x for x in reversed(output.splitlines()) if x.startswith("COGO-PROBE ")), None)
            if done.returncode != 0 or line is None:
                return f"probe exited with {done.returncode}: {output.strip()[-400:]}"
            return _judge(json.loads(line.removeprefix("COGO-PROBE ")), mode)

    def run(self, program: str, args: list[str], *, layout: Layout, log_path: Path, timeout_s: float,
            pass_fds: tuple[int, ...] = ()) -> Completed:
        """Run ``program`` (Python source) with ``args`` confined, its output into ``log_path``.

        The workspace is the working directory; every process it starts is killed when it ends.

        Raises:
            WorkFailed: ``sandbox.unavailable`` when the sandbox cannot confine (probed, or found
                broken by this run).
        """
        mode = self.mode
        ready_r, ready_w = os.pipe() if mode == "unshare" else (None, None)
        try:
            done = self._run(mode, program, args, layout=layout, log=log_path, timeout_s=timeout_s,
                             pass_fds=pass_fds, ready_fd=ready_w)
        except OSError as exc:
            self.forget()
            raise unavailable(f"cannot start the sandbox: {exc}", self.requested) from exc
        finally:
            if ready_w is not None:
                os.close(ready_w)
        ready = _said_ready(ready_r)
        broken = "" if ready else _setup_failed(log_path, mode, done.returncode)
        if broken:
            self.forget()
            raise unavailable(broken, self.requested)
        return done

    def _run(self, mode: str, program: str, args: list[str], *, layout: Layout, log: Path, timeout_s: float,
             pass_fds: tuple[int, ...] = (), ready_fd: int | None = None) -> Completed:
        python = [sys.executable, "-I", "-B", "-c", BOOT, self.limits.boot_arg(), program, *args]
        if mode == "unconfined":
            cmd, cwd = python, layout.workspace
            env = sandbox_env(str(layout.scratch))
        else:
            uid = _sandbox_uid()
            _own(layout.workspace, uid)
            binds = host_binds()
            tmp_mb = max(16, self.limits.file_mb * 2)
            if mode == "unshare":
                cmd = unshare_command(python, layout=layout, binds=binds, masks=self.masks, uid=uid, tmp_mb=tmp_mb,
                                      ready_fd=ready_fd)
                pass_fds = (*pass_fds, ready_fd) if ready_fd is not None else pass_fds
            else:
                cmd = bwrap_command(python, layout=layout, binds=binds, masks=self.masks, uid=uid, tmp_mb=tmp_mb)
            cwd, env = layout.scratch, sandbox_env("/tmp")
        return run_bounded(cmd, cwd=cwd, env=env, timeout_s=timeout_s, log=log, pass_fds=pass_fds)


_SHARED: dict[tuple, Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def _judge(seen: dict[str, Any], mode: str) -> str | None:
    """Why what a probe saw is not confinement, or None."""
    if os.geteuid() == 0 and seen.get("uid") == 0:
        return "sandboxed code ran as root"
    problems = {"caps": seen.get("caps") != 0, "canary_hidden": seen.get("canary_hidden") is not True,
                "interfaces": seen.get("interfaces") not in (["lo"], []),
                "host_pid_visible": seen.get("host_pid_visible") is not False,
                "root_writable": seen.get("root_writable") is not False}
    failed = [name for name, bad in problems.items() if bad]
    return f"{mode} ran the probe unconfined ({', '.join(failed)}: {seen})" if failed else None


def _said_ready(fd: int | None) -> bool:
    """Whether the trusted setup wrote ``ok`` on its descriptor (before any sandboxed code ran)."""
    if fd is None:
        return False
    try:
        os.set_blocking(fd, False)
        return os.read(fd, 2) == b"ok"
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _setup_failed(log_path: Path, mode: str, returncode: int | None) -> str:
    """What the launcher said when it could not build the sandbox, or "" (the code ran)."""
    prefix, code = {"unshare": ("cogo-sandbox: ", SETUP_FAILED), "bwrap": ("bwrap: ", 1)}.get(mode, ("", None))
    if returncode != code or not log_path.exists():
        return ""
    with log_path.open("rb") as f:  # the launcher speaks before any sandboxed code could
        head = f.read(4096).decode("utf-8", errors="replace")
    return next((line for line in head.splitlines() if line.startswith(prefix)), "")


def _sandbox_uid() -> int:
    return SANDBOX_UID_BASE + os.getpid() if os.geteuid() == 0 else os.geteuid()


def _own(workspace: Path, uid: int) -> None:
    """Give the workspace to the sandbox's uid, so generated code can write there and nowhere else."""
    if os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(workspace):
        os.chown(root, uid, uid, follow_symlinks=False)
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def trusted_path(layout: Layout, mode: str, name: str) -> str:
    """Where the trusted file ``name`` appears to sandboxed code."""
    return str(layout.trusted / name) if mode == "unconfined" else f"{TRUSTED}/{name}"


def workspace_path(layout: Layout, mode: str) -> str:
    """Where the workspace appears to sandboxed code."""
    return str(layout.workspace.resolve()) if mode == "unconfined" else WORKSPACE


# ---------------------------------------------------------------- running and killing


def run_bounded(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout_s: float, log: Path,
                pass_fds: tuple[int, ...] = ()) -> Completed:
    """Run ``cmd`` with stdout+stderr into ``log``; kill its whole process group after ``timeout_s``.

    Output goes to a file, not a pipe, so a chatty test cannot fill the worker's memory.

    Raises:
        OSError: when the command cannot be started.
    """
    started = time.monotonic()
    setpriv = shutil.which("setpriv")
    if setpriv:  # if the worker dies (kill -9 too), the kernel kills what it started: the sandbox goes with it
        cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
    with log.open("wb") as out:
        # A new session makes the child a group leader, so its group dies with it on timeout; the
        # namespaced modes also kill everything in the sandbox's PID namespace when its first process ends.
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=pass_fds)
        try:
            returncode = proc.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Completed(None, time.monotonic() - started, True)
        except BaseException:
            # The runtime's TTL alarm (or a shutdown) interrupts the wait: take the children with us.
            _kill_group(proc)
            raise
    return Completed(returncode, time.monotonic() - started, False)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()
