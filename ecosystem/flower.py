"""The ``flower`` process: Celery's live view of workers and queues, against the fleet's broker."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import traceback

from bus.settings import Settings
from ecosystem.net import probe_host
from ecosystem.readiness import mark_ready


def main(settings: Settings, name: str) -> None:
    """Run Flower on ``settings.flower_port`` until SIGTERM/SIGINT; marks readiness once it listens."""
    from bus.celery_app import make_celery

    app = make_celery(settings, name=name)
    watcher = threading.Thread(target=_mark_ready_when_listening,
                               args=(probe_host(settings.api_host), settings.flower_port),
                               name="flower-ready", daemon=True)
    watcher.start()
    code = 0
    try:
        app.start(["flower", f"--port={settings.flower_port}", f"--address={settings.api_host}",
                   f"--logging={settings.log_level.lower()}"])
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # Flower's SIGTERM handler leaves its inspector threads blocked on the broker, and the
        # interpreter's exit would wait for them forever: nothing is left to save, so leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _mark_ready_when_listening(host: str, port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                mark_ready()
                return
        except OSError:
            time.sleep(0.1)
