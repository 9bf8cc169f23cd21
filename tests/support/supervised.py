"""A test fleet supervised as ``cogo up`` supervises it: ``Fleet.tend`` in a thread while the block runs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ecosystem.launcher import Fleet


@contextlib.contextmanager
def supervised(fleet: Fleet, poll_s: float = 0.2) -> Iterator[Fleet]:
    """Restart any child of ``fleet`` that dies (with ``cogo up``'s backoff) until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            fleet.tend()

    thread = threading.Thread(target=loop, name="test-supervisor", daemon=True)
    thread.start()
    try:
        yield fleet
    finally:
        stop.set()
        thread.join(timeout=10)
