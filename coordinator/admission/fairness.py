"""Fair shares weighted by spend: when a route is saturated, the tenant with the lowest recent share goes first.

A tenant's share is what it spent recently divided by its weight (``weight`` in the policy table, default 1):
the dollars its assignments recorded over the last ``WINDOW_S``, plus ``UNIT_USD`` per assignment, so tenants
whose work costs nothing are still told apart by how much work they ran. Shares are read at most once per
``REFRESH_S`` per dispatcher (one grouped read of the window's assignments), so a saturated route costs one
statement per second, not one per admission; between reads, this dispatcher counts its own admissions in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select

from bus import ledger
from bus.schema import agent_messages as m
from coordinator.admission.table import Table

WINDOW_S = 300.0
"""How far back a tenant's spend counts."""
UNIT_USD = 0.001
"""What one assignment counts for beside its dollars."""
REFRESH_S = 1.0
ADMITTED = (ledger.DISPATCHED, ledger.RUNNING, ledger.RETRY_WAIT, ledger.DONE, ledger.FAILED, ledger.DEAD,
            ledger.SETTLED)
"""Every status of an assignment that was admitted."""


def share(spent_usd: float, assignments: int, weight: float) -> float:
    """A tenant's spend-weighted share."""
    return (spent_usd + UNIT_USD * assignments) / weight


@dataclass
class Shares:
    """Every tenant's recent share, refreshed at most every ``REFRESH_S``."""

    _spend: dict[str, tuple[float, int]] = field(default_factory=dict)
    _read_at: float = float("-inf")

    def of(self, conn: Connection, tenant: str, table: Table, now: float) -> float:
        """``tenant``'s share at ``now`` (0 for a tenant that ran nothing recently)."""
        if not self._read_at <= now < self._read_at + REFRESH_S:
            self._spend = _recent(conn, now - WINDOW_S)
            self._read_at = now
        spent, count = self._spend.get(tenant, (0.0, 0))
        return share(spent, count, table.tenant(tenant).weight)

    def admitted(self, tenant: str) -> None:
        """Count an admission this process just made, so the share moves before the next read."""
        spent, count = self._spend.get(tenant, (0.0, 0))
        self._spend[tenant] = (spent, count + 1)


def _recent(conn: Connection, since: float) -> Mapping[str, tuple[float, int]]:
    # One range of the (status, updated_at) index per status: the window's rows, not the table's history.
    rows = conn.execute(select(m.c.tenant, func.coalesce(func.sum(m.c.usage_cost_usd), 0.0), func.count())
                        .where(m.c.status.in_(ADMITTED), m.c.updated_at >= since, m.c.kind == "assignment")
                        .group_by(m.c.tenant))
    return {r[0]: (float(r[1]), int(r[2])) for r in rows}
