"""How a process tells the launcher it is ready: it creates the file named by ``COGO_READY_FILE``."""

from __future__ import annotations

import os
from pathlib import Path

READY_ENV = "COGO_READY_FILE"


def mark_ready() -> None:
    """Create the ready file, if the launcher asked for one."""
    path = os.environ.get(READY_ENV)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(str(os.getpid()))
