"""The ``concurrency`` admission policy: slots per tenant, per route and per tenant on a route, counted from the
ledger's rows, and fair shares between tenants on a saturated route.

A slot is an admitted assignment that is ``dispatched`` or ``running``: the count is read from
``agent_messages``, never kept beside it, so a slot held by a worker that died is free the moment its lease is
taken back (the reclaimer moves the row on) — it cannot leak. On PostgreSQL each limit's key is locked for the
transaction (an advisory lock) before it is counted, so two dispatchers never both take the last slot: every key a
batch of admissions needs is taken once, in one order, before the first is asked (``prepare``), so two dispatchers
never wait on each other's keys in a cycle; SQLite has one writer at a time.

An assignment over a limit is deferred with the limit in plain words; the brain wakes the waiting assignments
of a tenant and route when one of theirs is settled (``coordinator/admission/waiting.py``), and each re-asks after
``RECHECK_S`` anyway (a slot freed by a lease taken back, or on another shard). When a route with a limit has free
slots and other tenants wait for one of them, a free slot goes to the tenants with the lowest spend-weighted share
first (``coordinator/admission/fairness.py``): only tenants that wait for this route's slots count (not one held
back by its own limit, a rate, a budget or a circuit, which could not take the slot).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, text

from bus import ledger
from bus.schema import agent_messages as m
from coordinator.admission import ADMIT, Ask, Setup, Verdict, defer
from coordinator.admission.fairness import Shares
from coordinator.admission.table import Table, live
from coordinator.admission.waiting import wake_oldest

RECHECK_S = 60.0
"""A waiting assignment asks again after this long even if nothing woke it (waking is the rule: a backlog of a
thousand waiting assignments re-asking every few seconds would cost the dispatcher more than the work)."""
FOR_A_SLOT = ("concurrency.route", "concurrency.yield")
"""The waits a free slot of the route ends."""
HOLDING = (ledger.DISPATCHED, ledger.RUNNING)
"""The rows that hold a slot."""


class ConcurrencyPolicy:
    """Max concurrent assignments per tenant, per route and per tenant on a route; fair shares on a full route."""

    name = "concurrency"

    def __init__(self, setup: Setup):
        self.table = live(setup.settings.policy_path)
        self.shares = Shares()

    def prepare(self, conn: Connection, rows: Iterable[Any], now: float) -> None:
        """Lock every limit key the batch's admissions will count, once and in one order."""
        table = self.table.get(now)
        _lock(conn, *(key for row in rows for key in _keys(table, row)))

    def check(self, ask: Ask) -> Verdict:
        """Defer while a limit is reached, or while tenants with a lower share wait for the route's free slots."""
        table = self.table.get(ask.now)
        tenant, route = ask.row.tenant, ask.route
        t_max = table.tenant(tenant).max_concurrent
        r = table.route(route)
        if not (t_max or r.max_concurrent or r.max_concurrent_per_tenant):
            return ADMIT
        conn = ask.conn
        _lock(conn, *_keys(table, ask.row))  # held already when the batch was prepared
        held = _held(conn, tenant, ask.row.service, ask.row.role)
        until = ask.now + RECHECK_S
        if t_max and held.tenant >= t_max:
            return defer("concurrency.tenant", f"tenant {tenant} is at its limit of {t_max} concurrent assignments",
                         until, tenant=tenant, limit=t_max, holding=held.tenant)
        if r.max_concurrent_per_tenant and held.route_tenant >= r.max_concurrent_per_tenant:
            return defer("concurrency.route_tenant",
                         f"tenant {tenant} is at its limit of {r.max_concurrent_per_tenant} concurrent assignments "
                         f"on {route}", until, tenant=tenant, route=route, limit=r.max_concurrent_per_tenant,
                         holding=held.route_tenant)
        if r.max_concurrent:
            if held.route >= r.max_concurrent:
                return defer("concurrency.route", f"{route} is at its limit of {r.max_concurrent} concurrent "
                             "assignments", until, route=route, limit=r.max_concurrent, holding=held.route)
            ahead = self._ahead(ask, table)
            if ahead and len(ahead) >= r.max_concurrent - held.route:
                # The tenants it yields to are asked now, and this one again soon (a doubling delay from 0.25 s),
                # not at the re-check: they may not take the slot after all (held back, when their turn comes, by
                # a rate, a budget or a circuit), and then it is this one's.
                ask.woken.extend(_wake_first(ask, ahead))
                return defer("concurrency.yield", f"{route} is nearly full; tenant(s) {', '.join(sorted(ahead))} "
                             f"spent less recently and go first", None, route=route, ahead=sorted(ahead))
            self.shares.admitted(tenant)
        return ADMIT

    def _ahead(self, ask: Ask, table: Table) -> set[str]:
        """The other tenants waiting for this route whose share is lower than this tenant's."""
        waiting = ask.conn.execute(select(m.c.tenant).distinct().where(
            m.c.status == ledger.QUEUED, m.c.kind == "assignment", m.c.service == ask.row.service,
            m.c.role == ask.row.role, m.c.waiting_for.in_(FOR_A_SLOT), m.c.tenant != ask.row.tenant)).scalars().all()
        if not waiting:
            return set()
        mine = self.shares.of(ask.conn, ask.row.tenant, table, ask.now)
        return {t for t in waiting if self.shares.of(ask.conn, t, table, ask.now) < mine}


def _wake_first(ask: Ask, tenants: set[str]) -> list[tuple[str, int]]:
    """Ask again now the oldest assignment of each of ``tenants`` waiting for this route's slot."""
    return wake_oldest(ask.conn, ask.now, m.c.service == ask.row.service, m.c.role == ask.row.role,
                       m.c.waiting_for.in_(FOR_A_SLOT), m.c.tenant.in_(sorted(tenants)))


class _Held:
    def __init__(self, tenant: int, route: int, route_tenant: int):
        self.tenant, self.route, self.route_tenant = tenant, route, route_tenant


def _held(conn: Connection, tenant: str, service: str, role: str) -> _Held:
    """The slots held by ``tenant``, by the route, and by the tenant on the route: one statement."""
    on_route = and_(m.c.service == service, m.c.role == role)
    mine = m.c.tenant == tenant
    row = conn.execute(select(func.coalesce(func.sum(case((mine, 1), else_=0)), 0),
                              func.coalesce(func.sum(case((on_route, 1), else_=0)), 0),
                              func.coalesce(func.sum(case((and_(mine, on_route), 1), else_=0)), 0))
                       .where(m.c.kind == "assignment", m.c.status.in_(HOLDING), mine | on_route)).one()
    return _Held(int(row[0]), int(row[1]), int(row[2]))


def _keys(table: Table, row: Any) -> list[str]:
    """The limit keys admitting ``row`` counts under."""
    if row is None or row.status not in (ledger.QUEUED, ledger.RETRY_WAIT):
        return []
    route = table.route(f"{row.service}.{row.role}")
    keys = [f"tenant/{row.tenant}"] if table.tenant(row.tenant).max_concurrent else []
    if route.max_concurrent or route.max_concurrent_per_tenant:
        keys.append(f"route/{row.service}.{row.role}")
    return keys


def _lock(conn: Connection, *keys: str) -> None:
    """Hold each limit's key until the transaction ends (PostgreSQL; SQLite writes one transaction at a time),
    in one order, so two dispatchers never both take a last slot. Taking a key again is free."""
    if conn.dialect.name != "postgresql":
        return
    for key in sorted(set(keys)):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(key.encode()) - 2**31})
