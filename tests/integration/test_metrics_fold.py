"""The fold of the audit log into the counters is exactly once, on SQLite and PostgreSQL: a second fold adds
nothing, a fold that dies before it commits adds nothing, folders racing each other and writers committing out of
order count every row once, a row committed late below rows already folded is counted once, a rolled-back id is
given up after the settle time of the folder's clock (never sooner because a writer's clock runs behind); retention
waits for the fold (and says so), and deletes the brain's rows in bounded batches. The migration that brings the
counters: ``tests/integration/test_migrations.py``."""

from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import event, insert, select

from bus.schema import bus_events, metric_cursor, metric_totals
from coordinator import retention
from coordinator.metrics import fold as fold_module
from coordinator.metrics.fold import SETTLE_S, fold, fold_once, totals
from coordinator.retention import prune
from tests.integration.test_metrics import known, one, scrape

NOW = 1_800_000_000.0


def stored(engine) -> dict[tuple[str, str], float]:
    with engine.connect() as conn:
        return {(r.name, r.labels): r.value for r in conn.execute(select(metric_totals))}


def expected(engine) -> dict[tuple[str, str], float]:
    """What every audit row in the ledger adds up to, computed in one go (the fold's answer must equal it)."""
    with engine.connect() as conn:
        rows = conn.execute(select(bus_events.c.id, bus_events.c.kind, bus_events.c.tenant, bus_events.c.attempt,
                                   bus_events.c.detail, bus_events.c.created_at)).all()
    return totals(rows)


def cursor(engine) -> tuple[int, list[int]]:
    with engine.connect() as conn:
        row = conn.execute(select(metric_cursor)).one()
    return row.low_id, sorted(row.seen)


def audit_row(conn, kind: str = "probe", *, id: int | None = None, at: float = NOW) -> None:
    conn.execute(insert(bus_events).values(**({"id": id} if id is not None else {}), message_id="m", tenant="acme",
                                           kind=kind, attempt=0, detail=None, created_at=at))


def counted(engine, kind: str = "probe") -> float:
    return stored(engine).get(("cogo_bus_events_total", f'kind="{kind}"'), 0.0)


def test_a_second_fold_adds_nothing(engine):
    k = known(engine)
    assert fold(engine, clock=k.fleet.clock) > 0
    once = stored(engine)
    assert once == pytest.approx(expected(engine))
    with engine.begin() as conn:
        assert fold_once(conn, now=k.fleet.clock.now).rows == 0
    assert fold(engine, clock=k.fleet.clock) == 0
    assert stored(engine) == once


def test_a_fold_that_dies_before_it_commits_adds_nothing(engine, monkeypatch):
    k = known(engine)

    def crash(*_a, **_kw):
        raise RuntimeError("the folder died after adding, before moving its cursor")

    monkeypatch.setattr(fold_module, "update", crash)
    with pytest.raises(RuntimeError, match="the folder died"):
        fold(engine, clock=k.fleet.clock)
    assert stored(engine) == {} and cursor(engine) == (0, [])  # the additions rolled back with it
    monkeypatch.undo()
    fold(engine, clock=k.fleet.clock)
    assert stored(engine) == pytest.approx(expected(engine))


def test_a_row_committed_late_below_folded_ids_is_counted_once(engine):
    with engine.begin() as conn:
        audit_row(conn, id=1)
        audit_row(conn, id=3)
    with engine.begin() as conn:
        assert fold_once(conn, now=NOW).rows == 2
    assert counted(engine) == 2 and cursor(engine) == (1, [3])
    with engine.begin() as conn:  # id 2 was taken before 3 but its transaction commits only now
        audit_row(conn, id=2)
    with engine.begin() as conn:
        assert fold_once(conn, now=NOW + 1).rows == 1
    assert counted(engine) == 3 and cursor(engine) == (3, [])
    with engine.begin() as conn:
        assert fold_once(conn, now=NOW + 2 * SETTLE_S).rows == 0
    assert counted(engine) == 3


def test_a_rolled_back_id_is_given_up_once_the_rows_above_it_are_older_than_the_settle_time(engine):
    with engine.connect() as conn:  # a writer takes an id, then rolls back (PostgreSQL never hands it out again)
        conn.begin()
        audit_row(conn)
        conn.rollback()
    with engine.begin() as conn:
        audit_row(conn)
    with engine.begin() as conn:
        fold_once(conn, now=NOW)
    with engine.connect() as conn:
        newest = conn.execute(select(bus_events.c.id)).scalar_one()
    low, seen = cursor(engine)
    assert counted(engine) == 1 and (low, seen) in ((newest, []), (newest - 2, [newest]))  # a hole on PostgreSQL
    with engine.begin() as conn:
        fold_once(conn, now=NOW + SETTLE_S + 1)
    assert counted(engine) == 1 and cursor(engine) == (newest, [])


def test_a_hole_below_rows_that_look_old_is_not_given_up_before_the_folders_settle_time(engine):
    """A writer whose clock runs far behind: the rows above a hole carry an old ``created_at``. The fold judges the
    hole by its own clock — it waits ``SETTLE_S`` from when it first read above it — so the late row is counted."""
    behind = NOW - 10 * SETTLE_S
    with engine.begin() as conn:
        audit_row(conn, id=1, at=behind)
        audit_row(conn, id=3, at=behind)  # id 2's transaction is still open
    with engine.begin() as conn:
        fold_once(conn, now=NOW)
    with engine.begin() as conn:
        fold_once(conn, now=NOW + SETTLE_S - 1)
    assert cursor(engine) == (1, [3])  # not given up: the rows' clock says nothing
    with engine.begin() as conn:
        audit_row(conn, id=2, at=behind)  # commits 59 s after the fold first saw the hole
    with engine.begin() as conn:
        assert fold_once(conn, now=NOW + SETTLE_S).rows == 1
    assert counted(engine) == 3 and cursor(engine) == (3, [])
    with engine.begin() as conn:
        audit_row(conn, id=5, at=behind)  # a hole at 4 that never fills
    for now in (NOW + 100, NOW + 100 + SETTLE_S - 1):
        with engine.begin() as conn:
            fold_once(conn, now=now)
        assert cursor(engine) == (3, [5])
    with engine.begin() as conn:
        fold_once(conn, now=NOW + 100 + SETTLE_S)
    assert cursor(engine) == (5, []) and counted(engine) == 4


def test_folders_racing_and_writers_committing_out_of_order_count_every_row_once(engine):
    writers, rows_each, folders = 3, 40, 3
    written = threading.Event()
    failures: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(rows_each):
                with engine.begin() as conn:
                    audit_row(conn, at=time.time())
                    time.sleep(rng.random() * 0.01)  # held open: a later id may commit first (PostgreSQL)
        except BaseException as exc:  # noqa: BLE001 - reported in the test thread
            failures.append(exc)

    def fold_until_written() -> None:
        try:
            while not written.is_set():
                fold(engine)
        except BaseException as exc:  # noqa: BLE001 - reported in the test thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    racers = [threading.Thread(target=fold_until_written) for _ in range(folders)]
    for t in [*threads, *racers]:
        t.start()
    for t in threads:
        t.join(timeout=120)
    written.set()
    for t in racers:
        t.join(timeout=120)
    assert failures == []
    fold(engine)
    assert counted(engine) == writers * rows_each
    assert cursor(engine)[1] == []


def waiting_since(engine) -> float | None:
    with engine.connect() as conn:
        return conn.execute(select(metric_cursor.c.retention_waiting_since)).scalar_one()


def test_retention_never_deletes_an_audit_row_the_fold_has_not_read_and_says_it_waits(engine, monkeypatch):
    k = known(engine)
    clock = k.fleet.clock
    clock.now += 2 * 86400  # every run ended more than a day before
    monkeypatch.setattr(fold_module, "fold", lambda *_a, **_kw: 0)  # a fold that cannot keep up
    monkeypatch.setattr(fold_module, "fold_once", lambda *_a, **_kw: None)
    assert prune(engine, retention_days=1, clock=clock).runs == 0
    with engine.connect() as conn:
        assert conn.execute(select(bus_events.c.id)).first() is not None
    since = clock.now
    assert waiting_since(engine) == since
    clock.now += 600
    assert prune(engine, retention_days=1, clock=clock).runs == 0
    assert waiting_since(engine) == since  # since the first pass that waited
    monkeypatch.undo()
    assert one(scrape(k), "cogo_retention_fold_wait_seconds") == 600
    assert prune(engine, retention_days=1, clock=clock).runs > 0
    assert counted(engine, "execute_done") == 3
    assert waiting_since(engine) is None and one(scrape(k), "cogo_retention_fold_wait_seconds") == 0


def test_retention_says_it_waits_when_the_fold_fails(engine, monkeypatch):
    def broken(*_a, **_kw):
        raise RuntimeError("a row the fold cannot read")

    monkeypatch.setattr(fold_module, "fold", broken)
    with pytest.raises(RuntimeError, match="cannot read"):
        prune(engine, retention_days=1, clock=lambda: NOW)
    assert waiting_since(engine) == NOW


def test_retention_deletes_the_brains_folded_rows_in_bounded_batches(engine, monkeypatch):
    monkeypatch.setattr(retention, "APPLIED_BATCH", 3)
    with engine.begin() as conn:
        for _ in range(8):
            audit_row(conn, "event_applied", at=NOW)
        audit_row(conn, "event_applied", at=NOW + 3 * 86400)  # too young
    fold(engine, clock=lambda: NOW)
    deletes: list[int] = []

    def count(_conn, _cursor, statement, parameters, *_args) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM BUS_EVENTS"):
            deletes.append(len(parameters) if isinstance(parameters, list | tuple | dict) else 0)

    event.listen(engine, "before_cursor_execute", count)
    try:
        pruned = prune(engine, retention_days=1, clock=lambda: NOW + 2 * 86400)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert pruned.applied == 8
    assert len(deletes) == 3 and all(n <= 3 for n in deletes), deletes  # 3 + 3 + 2, one transaction each
    assert counted(engine, "event_applied") == 9
    with engine.connect() as conn:
        assert conn.execute(select(bus_events.c.created_at)).scalars().all() == [NOW + 3 * 86400]
