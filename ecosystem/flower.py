"""The ``flower`` process: Celery's live view of workers and queues, against the fleet's broker.

Flower sees the fleet only if its Celery app knows the routed queues (``/api/queues/length`` lists the
queues its workers report, else the app's ``task_queues``), and it guards its UI and API with basic auth:
``Settings.flower_user`` and ``Settings.flower_password``, or a password generated once into
``<home>/flower.password`` (mode 0600). The credentials reach Flower through its ``FLOWER_BASIC_AUTH``
variable, never its command line (which every local user can read).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bus.errors import ConfigError
from bus.readiness import mark_ready
from bus.settings import Settings
from ecosystem.embedded import stored_secret
from ecosystem.net import probe_host
from ecosystem.processes import PROCESSES, Process

PASSWORD_FILE = "flower.password"
"""The generated Flower password, under ``COGO_HOME`` (mode 0600)."""


def password_path(settings: Settings) -> Path:
    """Where the generated Flower password is kept."""
    return Path(settings.home) / PASSWORD_FILE


def credentials(settings: Settings) -> tuple[str, str]:
    """Flower's basic-auth user and password: the configured ones, else a password generated once and reused.

    Raises:
        ConfigError: the user is empty or holds ``:`` or ``,``, or the password holds ``,`` (Flower splits
            ``user:password`` pairs on commas).
    """
    user = settings.flower_user
    if not user or ":" in user or "," in user:
        raise ConfigError(f"COGO_FLOWER_USER must be a non-empty name without ':' or ',', got {user!r}",
                          details={"variable": "COGO_FLOWER_USER"})
    if settings.flower_password:
        password = settings.flower_password
    else:
        Path(settings.home).mkdir(parents=True, exist_ok=True)
        password = stored_secret(password_path(settings))
    if "," in password:
        raise ConfigError("COGO_FLOWER_PASSWORD must not contain ','", details={"variable": "COGO_FLOWER_PASSWORD"})
    return user, password


def routed_queues(shards: int, processes: Sequence[Process] = PROCESSES) -> list[str]:
    """Every queue a celery process of the table consumes, for every shard, in table order."""
    return [queue for p in processes if p.kind == "celery" for queue in p.queues(shards)]


def main(settings: Settings, name: str) -> None:
    """Run Flower on ``settings.flower_port`` until SIGTERM/SIGINT; marks readiness once it listens."""
    from bus.celery_app import make_celery

    user, password = credentials(settings)
    os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    os.environ.pop("FLOWER_UNAUTHENTICATED_API", None)  # basic auth guards the API as well as the UI
    app = make_celery(settings, name=name, queues=routed_queues(settings.shards))
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
