"""What confined code sees of the host, and the ``unshare`` / ``bwrap`` commands that build that view.

A tmpfs root holding read-only binds of the system and Python directories, a fresh ``/proc``, a
minimal ``/dev`` and ``/etc``, a private ``/tmp``, the trusted runner files at ``/opt/cogo`` and
the workspace at ``/workspace``; then the code drops to a uid of its own with no capabilities.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SETUP_FAILED = 121
"""Exit status of the unshare setup script when it cannot build the sandbox."""
WORKSPACE = "/workspace"
TRUSTED = "/opt/cogo"
"""Where the runner's trusted files (the verdict plugin, an empty pytest.ini) appear, read-only."""
TOOLS = {"unshare": ("unshare", "setpriv", "pivot_root", "mount", "umount"), "bwrap": ("bwrap", "setpriv")}
"""What each mode needs on ``PATH``."""


@dataclass(frozen=True)
class Layout:
    """The host directories a run needs: the workspace (read-write) and the trusted files (read-only)."""

    workspace: Path
    trusted: Path
    scratch: Path
    """An empty directory outside the workspace the ``unshare`` mode mounts its root on."""


def prepare(home: Path) -> Layout:
    """A fresh layout under ``home``: ``workspace/``, ``trusted/`` (plugin, pytest.ini) and ``scratch/``."""
    layout = Layout(workspace=home / "workspace", trusted=home / "trusted", scratch=home / "scratch")
    for path in (layout.workspace, layout.trusted, layout.scratch):
        path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("verdict.py"), layout.trusted / "cogo_verdict.py")
    # An empty config given with -c: no pytest.ini, pyproject.toml or setup.cfg of the workspace applies.
    (layout.trusted / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    for path in (layout.trusted, *layout.trusted.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return layout


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def host_binds() -> tuple[list[Path], dict[str, str]]:
    """The host directories to bind read-only and the top-level symlinks to recreate (``/bin -> usr/bin``).

    The system directories, and the directories Python and pytest run from: nothing else of the host.
    """
    symlinks, dirs = {}, []
    for top in _SYSTEM:
        path = Path(top)
        if path.is_symlink():
            symlinks[top] = os.readlink(path)
        elif path.is_dir():
            dirs.append(path)
    python = Path(os.path.realpath(sys.executable)).parent.parent
    extra = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, python)}
    found = importlib.util.find_spec("pytest")  # where it is installed must be readable (the probe checks)
    if found is not None and found.origin:
        extra.add(Path(found.origin).resolve().parent.parent)
    for path in sorted(extra, key=lambda p: len(p.parts)):
        if path != Path("/") and not any(path.is_relative_to(d) for d in dirs):
            dirs.append(path)
    return dirs, symlinks


def _masked_under(binds: list[Path], masks: tuple[Path, ...]) -> list[Path]:
    return [m for m in masks if m.exists() and any(m.is_relative_to(d) for d in binds)]


def _drop(uid: int) -> list[str]:
    """``setpriv`` options that leave the code no capability and no way to gain one.

    As root: the sandbox's own uid and gid, no supplementary groups. Otherwise the user namespace
    maps only root (the worker's uid), so the code stays that uid, with the capabilities dropped.
    """
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if os.geteuid() == 0 else []
    return [*ids, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]


def unshare_command(python: list[str], *, layout: Layout, binds: tuple[list[Path], dict[str, str]],
                    masks: tuple[Path, ...], uid: int, tmp_mb: int, ready_fd: int | None = None) -> list[str]:
    """``unshare`` running a setup shell that builds the view, pivots into it and drops to ``uid``.

    With ``ready_fd``, the shell writes ``ok`` there once the view is built, before the sandboxed program
    starts: only the trusted setup can say that it succeeded.
    """
    q = shlex.quote
    tool = {name: q(shutil.which(name) or name) for name in TOOLS["unshare"]}
    lines = ['fail() { echo "cogo-sandbox: cannot confine: $1" >&2; exit ' + str(SETUP_FAILED) + '; }',
             f"R={q(str(layout.scratch.resolve()))}",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             'mount -t tmpfs -o mode=0755,size=8m,nosuid,nodev cogo-root "$R" || fail "tmpfs root"',
             *_private_lines(uid, tmp_mb), *_bind_lines(*binds, masks),
             f'mount --bind {q(str(layout.workspace.resolve()))} "$R/workspace" && '
             'mount -o remount,bind,nosuid,nodev "$R/workspace" || fail "workspace"',
             f'mount --bind {q(str(layout.trusted.resolve()))} "$R/opt/cogo" && '
             'mount -o remount,bind,ro,nosuid,nodev "$R/opt/cogo" || fail "trusted"',
             'mount -o remount,bind,ro,nosuid,nodev "$R" || fail "read-only root"',
             f'cd "$R" && {tool["pivot_root"]} . .oldroot && {tool["umount"]} -l /.oldroot || fail "pivot_root"',
             "cd /workspace && unset OLDPWD || fail workspace",
             # (by path: sh redirects only descriptors 0-9; the sandbox's code starts only after this line,
             # so whatever it could write there comes after the setup's own "ok")
             *([f'printf ok > /proc/self/fd/{ready_fd} || fail "ready"'] if ready_fd is not None else []),
             f"{tool['setpriv']} {' '.join(_drop(uid))} -- {shlex.join(python)}",
             "exit $?"]
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return [shutil.which("unshare") or "unshare", *user, "--mount", "--pid", "--fork", "--kill-child", "--net",
            "--ipc", "--uts", "--cgroup", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(lines)]


def _private_lines(uid: int, tmp_mb: int) -> list[str]:
    """The sandbox's own ``/proc``, ``/dev``, ``/tmp`` and ``/etc`` (mounted first: binds may lie under /tmp)."""
    passwd = f"root:x:0:0::/:/bin/false\nsandbox:x:{uid}:{uid}::/tmp:/bin/false\n"
    return [
        'mkdir -p "$R/proc" "$R/dev" "$R/tmp" "$R/etc" "$R/workspace" "$R/opt/cogo" "$R/.oldroot" || fail mkdir',
        # hidepid: sandboxed code sees only its own processes, not this setup shell.
        'mount -t proc -o nosuid,nodev,noexec,hidepid=2 proc "$R/proc" || fail "proc"',
        'mount -t tmpfs -o mode=0755,size=64k,nosuid cogo-dev "$R/dev" || fail "dev"',
        'for n in null zero full random urandom; do touch "$R/dev/$n" && mount --bind "/dev/$n" "$R/dev/$n" '
        '|| fail "dev/$n"; done',
        'mkdir -p "$R/dev/shm" && ln -s /proc/self/fd "$R/dev/fd" || fail "dev/fd"',
        f'mount -t tmpfs -o mode=1777,size={tmp_mb}m,nosuid,nodev cogo-shm "$R/dev/shm" || fail "shm"',
        f'mount -t tmpfs -o mode=1777,size={tmp_mb}m,nosuid,nodev cogo-tmp "$R/tmp" || fail "tmp"',
        f'printf %s {shlex.quote(passwd)} > "$R/etc/passwd" && printf "root:x:0:\\nsandbox:x:{uid}:\\n" '
        '> "$R/etc/group" && printf "127.0.0.1 localhost\\n::1 localhost\\n" > "$R/etc/hosts" || fail "etc"',
    ]


def _bind_lines(dirs: list[Path], symlinks: dict[str, str], masks: tuple[Path, ...]) -> list[str]:
    """Read-only binds of ``dirs``, empty tmpfs over ``masks`` under them, the top-level symlinks."""
    q = shlex.quote
    # --bind, not --rbind: a host mount under a bound directory is not carried in at all (a recursive bind
    # would carry it with its own, possibly writable, flags; the read-only remount reaches only the top).
    lines = [f'mkdir -p "$R"{q(str(d))} && mount --bind {q(str(d))} "$R"{q(str(d))} && '
             f'mount -o remount,bind,ro,nosuid,nodev "$R"{q(str(d))} || fail "bind {d}"' for d in dirs]
    lines += [f'mount -t tmpfs -o size=4k,mode=000 cogo-mask "$R"{q(str(m))} || fail "mask {m}"'
              for m in _masked_under(dirs, masks)]
    lines += [f'ln -s {q(target)} "$R"{q(link)} || fail "symlink {link}"' for link, target in symlinks.items()]
    return lines


def bwrap_command(python: list[str], *, layout: Layout, binds: tuple[list[Path], dict[str, str]],
                  masks: tuple[Path, ...], uid: int, tmp_mb: int) -> list[str]:
    """``bwrap`` building the same view as ``unshare_command`` (as root, then dropping to ``uid``)."""
    dirs, symlinks = binds
    etc = layout.scratch / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(f"root:x:0:0::/:/bin/false\nsandbox:x:{uid}:{uid}::/tmp:/bin/false\n")
    (etc / "group").write_text(f"root:x:0:\nsandbox:x:{uid}:\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    size = str(tmp_mb << 20)
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try", "--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    # bwrap makes missing parents 0700 as root; the sandbox's uid must be able to walk through them.
    parents = sorted({str(a) for path in [*dirs, Path(TRUSTED)] for a in path.parents} - {"/", "/tmp"})
    for parent in parents:
        cmd += ["--perms", "0755", "--dir", parent]
    for path in dirs:
        cmd += ["--ro-bind", str(path), str(path)]
    for path in _masked_under(dirs, masks):
        cmd += ["--perms", "0000", "--size", "4096", "--tmpfs", str(path)]
    for link, target in symlinks.items():
        cmd += ["--symlink", target, link]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
            "--ro-bind", str(etc), "/etc", "--bind", str(layout.workspace.resolve()), WORKSPACE,
            "--ro-bind", str(layout.trusted.resolve()), TRUSTED,
            "--remount-ro", "/", "--chdir", WORKSPACE]
    if os.geteuid() == 0:
        # Root runs bwrap without a user namespace; drop to the sandbox's own uid inside, as unshare does.
        return [*cmd, "--", "setpriv", *_drop(uid), "--", *python]
    return [*cmd, "--unshare-user", "--cap-drop", "ALL", "--", *python]
