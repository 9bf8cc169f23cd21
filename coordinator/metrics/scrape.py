"""What one scrape of ``/metrics`` reads: the folded counters (``metric_totals``, one row per sample), and gauges
from what is small whatever the ledger's size — the open rows (through the status index), the circuits, the agent
registry, the runs not ended (through the status index), the fold's cursor, the supervisor's report — and then,
with the ledger's connection closed, the broker's queue depths (``depths.py``: one connection, a deadline). Never
the audit log, the introspection events or the ended rows: a scrape costs the same at any ledger size
(``tests/integration/test_metrics_scrape.py`` counts the rows it reads). No transaction is open while the broker is
asked: on SQLite a scrape's transaction holds the fleet's write lock, on PostgreSQL it would sit idle in
transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import Connection, Engine, case, func, or_, select

from bus import agents, circuits, ledger
from bus.routing import DECIDE, EXECUTE, ORCHESTRATOR, queue_name
from bus.schema import agent_messages as m
from bus.schema import metric_cursor as mc
from bus.schema import metric_totals as mt
from coordinator import supervision_report
from coordinator.metrics import families as f
from coordinator.metrics.depths import Depths
from coordinator.metrics.families import Family, le_text, parse_labels
from coordinator.metrics.fold import CURSOR_ID
from coordinator.schema import runs
from coordinator.state import RUN_PENDING, RUN_RUNNING, RUN_WAITING

WAITING = (ledger.QUEUED, ledger.DISPATCHED, ledger.RETRY_WAIT)
ACTIVE = (RUN_PENDING, RUN_RUNNING, RUN_WAITING)
AskDepths = Callable[[Sequence[str]], Depths]
"""The depths of queues as the broker says (``depths.queue_depths``: one connection, a deadline)."""


@dataclass(frozen=True)
class Sources:
    """Where a scrape's gauges come from besides the ledger."""

    shards: int = 1
    depths: AskDepths | None = None
    """None: no broker to ask (no ``cogo_queue_depth``, no ``cogo_broker_up``)."""
    home: Path | None = None
    """Where ``cogo up`` writes its supervision report (None: no restarts reported)."""
    fold_success: Callable[[], float | None] | None = None
    """When this process last folded the audit log (None: it does not fold)."""


@dataclass(frozen=True)
class FromLedger:
    """What a scrape read from the ledger: its families, and the routes whose queues the broker is asked about."""

    metrics: list[Metric]
    routes: list[str]


class Collector:
    """The Prometheus collector of one metrics server: everything is read again at every scrape."""

    def __init__(self, engine: Engine, sources: Sources, clock: Callable[[], float]):
        self.engine, self.sources, self.clock = engine, sources, clock

    def collect(self) -> Iterator[Metric]:
        """Every family."""
        yield from scrape(self.engine, self.sources, now=self.clock())


def scrape(engine: Engine, sources: Sources, *, now: float) -> list[Metric]:
    """Every family of one scrape: the ledger read in one connection, closed before the broker is asked."""
    with engine.connect() as conn:
        found = read_ledger(conn, sources, now=now)
    return found.metrics + _broker(sources, found.routes)


def read_ledger(conn: Connection, sources: Sources, *, now: float) -> FromLedger:
    """Every family but the broker's: the ledger's (through ``conn``), the supervisor's report and when this
    process last folded."""
    totals = conn.execute(select(mt.c.name, mt.c.labels, mt.c.value)).all()
    live = agents.live_routes(conn, now=now)
    out = [_folded(family, totals) for family in f.FOLDED]
    ages, routes = _oldest(conn, live, now)
    out += [ages, _circuits(conn), _agents(live), _runs(conn), _retention(conn, now)]
    out += _supervision(sources.home)
    success = sources.fold_success() if sources.fold_success is not None else None
    if success is not None:
        out.append(_gauge(f.FOLD_SUCCESS, [((), success)]))
    return FromLedger(out, routes)


def _folded(family: Family, totals: list[Any]) -> Metric:
    """A counter or histogram family from its ``metric_totals`` rows."""
    if family.type == "counter":
        found = CounterMetricFamily(family.name, family.help, labels=list(family.labels))
        for row in totals:
            if row.name == family.sample:
                found.add_metric(_values(family, parse_labels(row.labels)), row.value)
        return found
    found = HistogramMetricFamily(family.name, family.help, labels=list(family.labels))
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for row in totals:
        if row.name in (f"{family.name}_bucket", f"{family.name}_sum"):
            labels = parse_labels(row.labels)
            le = labels.pop("le", "sum")
            series.setdefault(_values(family, labels), {})[le] = row.value
    for values, samples in sorted(series.items()):
        # Cumulative as stored; a bucket with no row had no observation at or under its bound.
        buckets = [(le_text(b), samples.get(le_text(b), 0.0)) for b in (*family.buckets, float("inf"))]
        found.add_metric(list(values), buckets, samples.get("sum", 0.0))
    return found


def _values(family: Family, labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in family.labels)


def _gauge(family: Family, samples: list[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    found = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
    for values, value in samples:
        found.add_metric(list(values), value)
    return found


def _oldest(conn: Connection, live: dict[str, Any], now: float) -> tuple[Metric, list[str]]:
    """Each route's oldest due row nobody took (one statement over the open rows), and every route known: the
    brain's, those with live agents, those with rows waiting."""
    due = or_(m.c.retry_at.is_(None), m.c.retry_at <= now)
    # Waiting since: admission asked for (queued), admitted (dispatched), or its backoff over (retry_wait).
    since = case((m.c.status == ledger.DISPATCHED, func.coalesce(m.c.dispatched_at, m.c.updated_at)),
                 (m.c.status == ledger.RETRY_WAIT, m.c.retry_at), else_=m.c.created_at)
    oldest = {f"{service}.{role}": at for service, role, at in conn.execute(
        select(m.c.service, m.c.role, func.min(since)).where(m.c.status.in_(WAITING), due)
        .group_by(m.c.service, m.c.role))}
    known = sorted({f"{ORCHESTRATOR}.{DECIDE}", f"{ORCHESTRATOR}.{EXECUTE}"} | set(live) | set(oldest))
    ages = [((route,), max(0.0, now - oldest[route]) if route in oldest else 0.0) for route in known]
    return _gauge(f.QUEUE_OLDEST_AGE, ages), known


def _broker(sources: Sources, routes: list[str]) -> list[Metric]:
    """Each route's queue depth (every shard summed; a route the broker did not tell entirely is left out, never
    a zero) and whether the broker told them all in time."""
    if sources.depths is None:
        return []
    shards = {route: [queue_name(route.partition(".")[0], route.partition(".")[2], shard)
                      for shard in range(sources.shards)] for route in routes}
    told = sources.depths([q for route in routes for q in shards[route]])
    depths = [((route,), float(sum(told.by_queue[q] for q in queues))) for route, queues in shards.items()
              if all(q in told.by_queue for q in queues)]
    return [_gauge(f.QUEUE_DEPTH, depths), _gauge(f.BROKER_UP, [((), 1.0 if told.up else 0.0)])]


def _circuits(conn: Connection) -> Metric:
    return _gauge(f.CIRCUIT_STATE, [((c.service, c.role, c.model), f.CIRCUIT_VALUES.get(c.state, 0))
                                    for c in circuits.read_all(conn)])


def _agents(live: dict[str, Any]) -> Metric:
    return _gauge(f.AGENTS_LIVE, [((route,), known.live) for route, known in sorted(live.items())])


def _runs(conn: Connection) -> Metric:
    rows = conn.execute(select(runs.c.workflow, runs.c.status, func.count()).where(runs.c.status.in_(ACTIVE))
                        .group_by(runs.c.workflow, runs.c.status))
    return _gauge(f.RUNS_ACTIVE, [((workflow, status), n) for workflow, status, n in rows])


def _retention(conn: Connection, now: float) -> Metric:
    """How long retention has waited for the fold to read the audit rows of the runs it would prune (0: not)."""
    since = conn.execute(select(mc.c.retention_waiting_since).where(mc.c.id == CURSOR_ID)).scalar()
    return _gauge(f.RETENTION_FOLD_WAIT, [((), max(0.0, now - since) if since is not None else 0.0)])


def _supervision(home: Path | None) -> list[Metric]:
    """Restarts and crash loops as ``cogo up`` reports them; nothing when no supervisor here reports."""
    report = supervision_report.read(home) if home is not None else None
    if report is None:
        return []
    restarts = CounterMetricFamily(f.PROCESS_RESTARTS.name, f.PROCESS_RESTARTS.help,
                                   labels=list(f.PROCESS_RESTARTS.labels))
    looping = []
    for label, entry in sorted((report.get("processes") or {}).items()):
        values = (str(entry.get("process")), label)
        restarts.add_metric(list(values), int(entry.get("restarts") or 0))
        looping.append((values, 1 if entry.get("state") == supervision_report.CRASH_LOOPING else 0))
    return [restarts, _gauge(f.PROCESS_CRASH_LOOPING, looping)]
