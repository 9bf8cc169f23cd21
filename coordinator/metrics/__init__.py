"""Metrics an SRE can alert on and the dashboard's cards (``docs/metrics.md``).

- ``families``: every family, its unit, labels and buckets; what decision quality is.
- ``fold``: the audit log added into the counters (``metric_totals``), exactly once.
- ``scrape``: what ``/metrics`` reads (the counters and cheap gauges: its cost does not grow with the ledger).
- ``cards``: the JSON cards, from bounded reads.
- ``server``: ``cogo-metrics-server``.
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """``server.create_app`` (imported when called: the fold alone needs no web framework)."""
    from coordinator.metrics.server import create_app as create

    return create(*args, **kwargs)
