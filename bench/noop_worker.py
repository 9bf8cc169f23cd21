"""The bench's no-op worker: ``bench.noop`` does nothing but count, so only the fleet's cost is measured."""

from __future__ import annotations

from typing import Any

from bus.settings import Settings
from workers.handler import WorkContext, WorkResult


def noop(_ctx: WorkContext, payload: dict[str, Any]) -> WorkResult:
    """Return ``{"n": n + 1}``: the loop workflow counts its iterations with it."""
    return WorkResult(output={"n": int(payload.get("n") or 0) + 1})


HANDLERS = {("bench", "noop"): noop}
"""The routes this worker serves."""


def main(settings: Settings, name: str) -> None:
    """Run a no-op worker process (solo pool, like every cogo consumer)."""
    from workers.runtime import serve

    serve(settings, name=name, handlers=HANDLERS)
