"""Hostile edits fed to build-test: every attack of issue 8 item 2 fails, and nothing of it survives.

Each hostile test file does its worst and saves what it got in ``loot.json`` inside its workspace
(where it may write), so these tests can check both that the attack ran and that it failed.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from tests.sandbox.conftest import SECRET, assert_none_survive

STEAL = '''
import json, os

def grab(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except Exception as exc:
        return f"refused: {{type(exc).__name__}}: {{exc}}"

def test_steal():
    loot = {{"env": dict(os.environ), "files": {{p: grab(p) for p in {paths!r}}}}}
    loot["files"]["$COGO_HOME/cogo.db"] = grab(os.environ.get("COGO_HOME", "/nonexistent") + "/cogo.db")
    loot["proc"] = sorted(os.listdir("/proc"))
    with open("loot.json", "w") as f:
        json.dump(loot, f)
'''


def test_the_ledger_and_the_worker_secrets_cannot_be_read(world):
    paths = [str(world.ledger), "../../../../cogo.db", "../../../cogo.db", str(world.env_dir / "cogo.db"),
             str(world.artifacts), "/proc/1/environ", "/proc/self/environ", "/etc/shadow", "/root/.bash_history"]
    result = world.build_test({"test_steal.py": STEAL.format(paths=paths)})
    loot = world.loot()
    assert result.output["passed"] == 1  # the thief ran to the end
    assert SECRET not in Path(world.workspace() / "loot.json").read_text()
    assert not [k for k in loot["env"] if k.startswith("COGO_") or "DATABASE" in k or "BROKER" in k]
    for path in (str(world.ledger), str(world.env_dir / "cogo.db"), "$COGO_HOME/cogo.db", "/etc/shadow"):
        assert loot["files"][path].startswith("refused"), path


def test_host_processes_and_their_environments_are_out_of_sight(world):
    me = os.getpid()
    paths = [f"/proc/{me}/environ", f"/proc/{me}/cmdline", "/proc/1/environ", "/proc/1/cmdline"]
    world.build_test({"test_steal.py": STEAL.format(paths=paths)})
    loot = world.loot()
    assert SECRET not in Path(world.workspace() / "loot.json").read_text()
    pids = [int(p) for p in loot["proc"] if p.isdigit()]
    assert pids and max(pids) < 100 and me not in pids  # its own PID namespace: a handful of its own
    host_init = Path("/proc/1/cmdline").read_bytes().decode(errors="replace")
    assert loot["files"]["/proc/1/cmdline"] != host_init


def test_no_network_not_even_loopback(world):
    with socket.socket() as listener:  # stands for the broker, the API and the embedded Redis
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        probe = f'''
        import json, socket

        def test_connect():
            outcomes = {{}}
            for host in ("127.0.0.1", "localhost", "::1"):
                try:
                    socket.create_connection((host, {port}), timeout=3).close()
                    outcomes[host] = "connected"
                except OSError as exc:
                    outcomes[host] = f"refused: {{exc}}"
            json.dump(outcomes, open("loot.json", "w"))
        '''
        world.build_test({"test_net.py": probe})
        loot = world.loot()
        assert loot and all(v.startswith("refused") for v in loot.values()), loot
        try:
            listener.accept()
            accepted = True
        except BlockingIOError:
            accepted = False
        assert not accepted


def test_writes_outside_the_workspace_fail_by_path_and_by_symlink(world):
    outside = world.root / "outside"
    outside.mkdir()
    target = outside / "planted.txt"
    existing = world.ledger
    before = existing.read_bytes()
    escape = f'''
    import json, os

    def attempt(what, fn):
        try:
            fn()
            return "done"
        except Exception as exc:
            return f"refused: {{type(exc).__name__}}"

    def write(path):
        with open(path, "w") as f:
            f.write("pwned")

    def test_escape():
        os.symlink({str(outside)!r}, "out")
        os.symlink({str(existing)!r}, "ledger")
        os.symlink("/", "root")
        loot = {{
            "absolute": attempt("abs", lambda: write({str(target)!r})),
            "overwrite": attempt("over", lambda: write({str(existing)!r})),
            "symlink dir": attempt("dir", lambda: write("out/planted.txt")),
            "symlink file": attempt("file", lambda: write("ledger")),
            "via root": attempt("root", lambda: write("root/usr/cogo-escape")),
            "private tmp": "refused: private" if os.path.realpath("root/tmp") == "/tmp" else "done",
            "usr": attempt("usr", lambda: write("/usr/cogo-escape")),
            "etc": attempt("etc", lambda: write("/etc/cogo-escape")),
            "root fs": attempt("rootfs", lambda: write("/cogo-escape")),
            "remount": attempt("mount", lambda: os.system("mount -o remount,rw / 2>/dev/null") == 0 or 1 / 0),
        }}
        json.dump(loot, open("loot.json", "w"))
    '''
    world.build_test({"test_escape.py": escape})
    loot = world.loot()
    assert loot and all(v.startswith("refused") for v in loot.values()), loot
    assert not target.exists() and existing.read_bytes() == before
    assert not Path("/usr/cogo-escape").exists() and not Path("/etc/cogo-escape").exists()
    assert not Path("/cogo-escape").exists() and not Path("/tmp/cogo-escape").exists()


def test_a_3_gb_allocation_fails(world):
    hog = '''
    import json

    def test_hog():
        try:
            block = bytearray(3 * 1024 ** 3)
            outcome = f"allocated {len(block)}"
        except MemoryError:
            outcome = "refused: MemoryError"
        json.dump({"alloc": outcome}, open("loot.json", "w"))
    '''
    world.build_test({"test_hog.py": hog})
    assert world.loot() == {"alloc": "refused: MemoryError"}


def test_a_fork_storm_is_capped_and_reaped(world):
    marker = f"cogo-storm-{uuid.uuid4().hex[:12]}"
    storm = f'''
    import json, os

    def test_storm():
        started, refused = 0, 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                refused += 1
                continue
            if pid == 0:
                os.execv("/bin/sleep", ["{marker}", "60"])
            started += 1
        json.dump({{"started": started, "refused": refused}}, open("loot.json", "w"))
    '''
    world.build_test({"test_storm.py": storm})  # the default COGO_SANDBOX_MAX_PROCS (64)
    loot = world.loot()
    assert loot["started"] < world.settings.sandbox_max_procs and loot["refused"] > 0, loot
    assert_none_survive(marker)


def test_a_double_forked_daemon_does_not_outlive_the_step(world):
    marker = f"cogo-daemon-{uuid.uuid4().hex[:12]}"
    daemon = f'''
    import json, os, time

    def test_daemon():
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sh", ["{marker}", "-c", "while :; do date >> heartbeat; sleep 0.1; done"])
            os._exit(0)
        deadline = time.monotonic() + 20
        while not os.path.exists("heartbeat") and time.monotonic() < deadline:
            time.sleep(0.05)
        json.dump({{"daemon": os.path.exists("heartbeat")}}, open("loot.json", "w"))
    '''
    world.build_test({"test_daemon.py": daemon})
    assert world.loot() == {"daemon": True}  # it was running when the tests ended
    assert_none_survive(marker)


def test_an_infinite_loop_ends_at_the_cpu_limit_with_a_clear_code(world):
    result = world.build_test({"test_loop.py": "def test_loop():\n    while True:\n        pass\n"}, cpu_s=2)
    out = result.output
    assert out["limit"] == "sandbox.cpu_limit" and out["success_rate"] == 0.0 and out["passed"] == 0
    assert "sandbox.cpu_limit" in out["feedback"] and "CPU-time limit of 2 s" in out["feedback"]


def test_the_secret_in_the_worker_environment_is_not_in_the_report(world):
    result = world.build_test({"test_env.py": "import os\n\n\ndef test_env():\n    print(dict(os.environ))\n"
                                              "    assert False\n"})
    report = Path(result.output["report_path"]).read_text()
    assert SECRET not in report and SECRET not in str(result.output)
    assert "PYTEST_DISABLE_PLUGIN_AUTOLOAD" in report  # the environment was printed: it just holds no secret
