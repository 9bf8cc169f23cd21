"""A scrape of ``/metrics`` costs the same whatever the ledger's size: it reads the folded counters and gauges of
small things (open rows, runs not ended, circuits, agents), never the audit log, the introspection events or the
ended rows — checked on the statements it runs and, on PostgreSQL, on the rows it reads at two ledger sizes. And it
asks the broker with its ledger connection closed, through one connection with a deadline: a broker that is down
costs it at most that deadline, and every other family is still there."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import event, text

from bus.celery_app import make_celery
from bus.db import make_engine
from bus.migrate import upgrade
from bus.outbox import Publisher
from bus.settings import Settings
from coordinator.metrics import create_app
from coordinator.metrics import depths as depths_module
from coordinator.metrics.depths import DEADLINE_S, Depths, queue_depths
from coordinator.metrics.fold import fold
from coordinator.metrics.scrape import Sources, read_ledger, scrape
from tests.integration.test_metrics import drain_timed, known, metrics_text
from tests.support.api import free_port, http, make_key
from tests.support.harness import submit
from tests.support.prometheus import samples
from tests.support.services import REDIS_URL, require


def test_a_scrape_reads_no_audit_log_no_events_and_no_ended_rows(engine):
    k = known(engine)
    fold(engine, clock=k.fleet.clock)
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        metrics_text(k)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    scraped = [s for s in statements if "api_keys" not in s]  # the key's check
    assert scraped, statements
    assert not [s for s in scraped if "bus_events" in s or "introspection_events" in s], scraped
    for s in scraped:  # the bus rows and the runs it reads are the open ones, through their status index
        if " FROM agent_messages" in s:
            assert "agent_messages.status IN" in s, s
        if " FROM runs" in s:
            assert "runs.status IN" in s, s


def _rows_read(conn) -> int:
    return int(conn.execute(text(
        "SELECT coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0) FROM pg_stat_xact_user_tables "
        "WHERE schemaname = current_schema()")).scalar())


def _scrape_reads(k) -> int:
    with k.fleet.engine.connect() as conn:
        before = _rows_read(conn)
        found = read_ledger(conn, Sources(shards=1), now=k.fleet.clock.now).metrics
        read = _rows_read(conn) - before
        conn.rollback()
    assert any(family.name == "cogo_assignments" and family.samples for family in found)
    return read


@pytest.fixture
def postgres_engine(engine_url_for):
    """A migrated PostgreSQL ledger (rows read are counted by PostgreSQL's ``pg_stat_xact_user_tables``), planned
    as on a ledger of real size: these tables are so small that a sequential scan would be cheapest."""
    engine = make_engine(engine_url_for("postgres"))
    upgrade(engine)
    engine.dispose()
    event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("SET enable_seqscan = off"))
    yield engine
    engine.dispose()


def test_a_scrape_reads_as_many_rows_on_a_ledger_ten_times_larger(postgres_engine):
    engine = postgres_engine
    k = known(engine)
    fold(engine, clock=k.fleet.clock)
    small = _scrape_reads(k)
    for _ in range(60):
        submit(k.fleet, "metered", {"mode": "ok"})
        drain_timed(k.fleet)
    fold(engine, clock=k.fleet.clock)
    large = _scrape_reads(k)
    assert small == large, (small, large)


def test_the_broker_is_asked_with_the_ledger_connection_closed(engine):
    k = known(engine)
    fold(engine, clock=k.fleet.clock)
    asked: list[list[str]] = []

    def depths(queues) -> Depths:
        # No connection checked out: no transaction open (SQLite's write lock, PostgreSQL's idle in transaction).
        assert engine.pool.checkedout() == 0
        asked.append(list(queues))
        return Depths({q: 2 for q in queues})

    found = samples_of(scrape(engine, Sources(shards=2, depths=depths), now=k.fleet.clock.now))
    assert asked == [["orchestrator.decide.0", "orchestrator.decide.1", "orchestrator.execute.0",
                      "orchestrator.execute.1", "t.work.0", "t.work.1"]]  # once, every route's every shard
    assert found["cogo_queue_depth"][(("route", "t.work"),)] == 4  # two shards of two
    assert found["cogo_broker_up"] == {(): 1.0}


def test_a_broker_that_is_down_costs_a_scrape_its_deadline_at_most_and_no_other_family(engine):
    k = known(engine)
    fold(engine, clock=k.fleet.clock)
    down = replace(k.fleet.settings, broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    app = create_app(engine, down, publisher=Publisher(make_celery(down, name="cogo-metrics-test")),
                     registry=k.fleet.registry, clock=k.fleet.clock)
    started = time.monotonic()
    answer = http(app, make_key(engine, "ops", ["metrics:read"])).get("/metrics")
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert took < DEADLINE_S + 3, took  # kombu's own retries took ~6 s per queue: four queues, past a 10 s timeout
    found = samples(answer.text)
    assert found["cogo_broker_up"] == {(): 0.0}
    assert found.get("cogo_queue_depth", {}) == {}  # absent, not zero
    assert found["cogo_assignments_total"][(("outcome", "done"), ("route", "t.work"))] == 3  # the rest is there
    assert (("route", "t.work"),) in found["cogo_queue_oldest_age_seconds"]


def test_the_broker_is_asked_once_and_not_past_the_deadline(monkeypatch):
    require("Redis", "127.0.0.1", 6379)
    app = make_celery(Settings(broker_url=REDIS_URL).checked(), name="cogo-depths-test")
    queues = [f"cogo-depth-probe-{i}" for i in range(4)]  # never declared: empty, read only
    assert queue_depths(app, queues) == Depths({q: 0 for q in queues})
    opened: list[object] = []
    real = app.connection_for_write
    monkeypatch.setattr(app, "connection_for_write", lambda **kw: opened.append(kw) or real(**kw))
    ticks = iter([0.0, 0.1, 0.2, DEADLINE_S + 1, DEADLINE_S + 2])  # the third question comes past the deadline
    told = queue_depths(app, queues, clock=lambda: next(ticks))
    assert told == Depths({queues[0]: 0, queues[1]: 0}, up=False) and len(opened) == 1


def test_the_first_failure_ends_the_asking(monkeypatch):
    require("Redis", "127.0.0.1", 6379)
    app = make_celery(Settings(broker_url=REDIS_URL).checked(), name="cogo-depths-test")
    calls: list[str] = []

    def failing(_conn, _channel, queue):
        calls.append(queue)
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(depths_module, "_depth", failing)
    assert queue_depths(app, ["a", "b", "c"]) == Depths({}, up=False) and calls == ["a"]


def samples_of(metrics) -> dict:
    """The samples of collected families, as ``tests.support.prometheus.samples`` reads a scrape's text."""
    class Fixed:
        def collect(self):
            return metrics

    registry = CollectorRegistry()
    registry.register(Fixed())
    return samples(generate_latest(registry).decode())
