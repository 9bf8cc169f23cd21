"""Tiny process entries for testing the launcher without the real fleet.

Each ``*_main(settings, name)`` has the signature of a process of the table. Run as a module, this file
is a launcher driven by a toy table (``python -m tests.support.toy_fleet <home>``): it prints its
children's pids as one ``PIDS <json>`` line once healthy and supervises until SIGTERM, like ``cogo up``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bus.readiness import mark_ready
from bus.settings import Settings
from ecosystem.processes import Process

MODULE = "tests.support.toy_fleet"


def _until_sigterm() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.1):
        pass


def loop_main(settings: Settings, name: str) -> None:
    """A timer-like process: ready at once, stops on SIGTERM."""
    print(f"toy {name} started", flush=True)
    mark_ready()
    _until_sigterm()
    print(f"toy {name} stopping", flush=True)


def short_main(settings: Settings, name: str) -> None:
    """Ready, then dies soon after: a process that crash-loops."""
    mark_ready()
    time.sleep(0.3)
    print(f"toy {name} crashing", flush=True)
    sys.exit(3)


def spawner_main(settings: Settings, name: str) -> None:
    """Starts a helper process of its own (in its process group) and waits for SIGTERM."""
    helper = subprocess.Popen(["sleep", "600"])
    print(f"toy {name} helper {helper.pid}", flush=True)
    mark_ready()
    _until_sigterm()


def http_main(settings: Settings, name: str) -> None:
    """An HTTP process answering ``/healthz`` on ``settings.api_port``."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer((settings.api_host, settings.api_port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"toy {name} listening on {settings.api_port}", flush=True)
    _until_sigterm()
    server.shutdown()


def crash_main(settings: Settings, name: str) -> None:
    """Fails during startup, saying why."""
    print(f"toy {name}: the frobnicator is missing", flush=True)
    sys.exit(3)


def silent_main(settings: Settings, name: str) -> None:
    """Runs but never says it is ready."""
    _until_sigterm()


def stubborn_main(settings: Settings, name: str) -> None:
    """Ready, but ignores SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    mark_ready()
    print(f"toy {name} ignores SIGTERM", flush=True)
    threading.Event().wait()


def toy(name: str, function: str, kind: str = "loop", **kwargs) -> Process:
    """A process of a toy table whose entry is ``function`` of this module."""
    return Process(name, kind, f"{MODULE}:{function}", f"toy {function}", **kwargs)


TOY_TABLE = (toy("toy-loop", "loop_main", replicas=2), toy("toy-spawner", "spawner_main"),
             toy("toy-http", "http_main", "http", port_setting="api_port"))


def _drive(home: Path) -> None:
    from rich.console import Console

    from ecosystem.launcher import Fleet, sigterm_as_interrupt

    settings = Settings(home=home, broker_url="memory://", database_url=f"sqlite:///{home / 'ledger.db'}")
    with sigterm_as_interrupt(), Fleet(settings.checked(), processes=TOY_TABLE, free_ports=True,
                                       ready_timeout_s=60, console=Console(width=200)) as fleet:
        print("PIDS " + json.dumps({c.label: c.pid for c in fleet.children}), flush=True)
        fleet.supervise(poll_s=0.1)
    print("DRIVER STOPPED", flush=True)


if __name__ == "__main__":
    _drive(Path(sys.argv[1]))
