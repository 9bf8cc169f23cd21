"""Infrastructure errors are not poison: a dropped database connection or a locked ledger is retried with
backoff, never counted against a brain event's crash budget, never turned into an assignment's denial.

On PostgreSQL the test's own backends (found with ``pg_backend_pid()`` on the connections of the engine under
test — no other backend is touched) are terminated with ``pg_terminate_backend`` in the middle of the brain's
and the dispatcher's transactions. On SQLite another connection holds the write lock.
"""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import event, select, text
from sqlalchemy import exc as sa_exc

from bus import faults
from bus.celery_app import TASK_DECIDE, TASK_EXECUTE
from bus.db import make_engine
from bus.errors import BrokerUnavailable, ContractError, LedgerUnavailable
from bus.schema import agent_messages as m
from bus.schema import bus_events
from coordinator import brain as brain_module
from coordinator.brain import Brain
from coordinator.dispatcher import Dispatcher
from tests.support.harness import Fleet, run_row, submit, take
from tests.support.services import POSTGRES_URL
from workers.handler import WorkResult


def echo(ctx, payload):
    return WorkResult(output={"ok": True})


# -- the one classification ---------------------------------------------------------------------------
def _invalidated() -> sa_exc.DBAPIError:
    err = sa_exc.DBAPIError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating connection"),
                            connection_invalidated=True)
    return err


@pytest.mark.parametrize("exc", [
    sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")),
    _invalidated(),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    KombuOperationalError("connection refused"),
    BrokerUnavailable("no broker"),
    LedgerUnavailable("no ledger"),
    ConnectionResetError("reset by peer"),
], ids=lambda e: type(e).__name__)
def test_infrastructure_faults_are_recognised(exc):
    assert faults.is_infrastructure(exc)
    wrapped = ContractError("while reading")
    wrapped.__cause__ = exc
    assert faults.is_infrastructure(wrapped)  # raised from one: still the infrastructure's


@pytest.mark.parametrize("exc", [
    RuntimeError("a bug in planning"),
    ContractError("payload.__assignment: field required"),
    sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")),
    sa_exc.DataError("INSERT", {}, psycopg.errors.NumericValueOutOfRange("out of range")),
    sa_exc.DBAPIError("SELECT 1", {}, psycopg.errors.SyntaxError("syntax"), connection_invalidated=False),
    KeyError("tokens"),
    # Dressed as operational, caused by the statement: retrying would fail for ever.
    sa_exc.OperationalError("SELECT 1", {}, psycopg.errors.QueryCanceled("canceling statement due to timeout")),
    sa_exc.OperationalError("INSERT", {}, psycopg.errors.ProgramLimitExceeded("index row size exceeds")),
    psycopg.errors.ProgramLimitExceeded("number of parameters must be between 0 and 65535"),
    sa_exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such column: nope")),
    sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("too many SQL variables")),
], ids=lambda e: type(e).__name__)
def test_errors_of_the_message_itself_are_not_infrastructure(exc):
    assert not faults.is_infrastructure(exc)


def test_retrying_backs_off_then_gives_the_message_back_to_the_ledger():
    naps: list[float] = []
    calls = []

    def outage():
        calls.append(1)
        raise sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))

    with pytest.raises(LedgerUnavailable) as raised:
        faults.retrying(outage, what="test", sleep=naps.append, rng=lambda: 0.5)
    assert len(calls) == faults.INFRASTRUCTURE_RETRY.maximum_attempts
    assert naps == sorted(naps) and naps[0] > 0  # backoff grows
    assert isinstance(raised.value.__cause__, sa_exc.OperationalError)
    with pytest.raises(RuntimeError):  # anything else goes through at once, untouched
        faults.retrying(lambda: (_ for _ in ()).throw(RuntimeError("bug")), what="test", sleep=naps.append)


# -- PostgreSQL: terminate the test's own backends mid-transaction ------------------------------------
class BackendKiller:
    """Terminates the backend of the engine's connection that is about to run a matching statement, the
    first ``times`` times. Only pids of this engine's own connections (``pg_backend_pid()``) are touched."""

    def __init__(self, engine, match: str, times: int):
        self.engine, self.match, self.left, self.killed = engine, match, times, 0
        self.admin = make_engine(POSTGRES_URL)
        self.pids: set[int] = set()
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "before_cursor_execute", self._before)
        engine.dispose()  # reconnect so every connection of the engine has its pid recorded

    def _on_connect(self, dbapi_conn, record):
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            record.info["pid"] = cur.fetchone()[0]
        self.pids.add(record.info["pid"])

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        if self.left <= 0 or not statement.lstrip().startswith(self.match):
            return
        pid = conn.connection._connection_record.info["pid"]
        assert pid in self.pids
        self.left -= 1
        with self.admin.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
        self.killed += 1

    def close(self):
        event.remove(self.engine, "connect", self._on_connect)
        event.remove(self.engine, "before_cursor_execute", self._before)
        self.admin.dispose()


@pytest.fixture
def pg_engine(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("pg_terminate_backend needs PostgreSQL (the SQLite version is below)")
    return engine


@pytest.mark.parametrize("match", ["UPDATE runs", "INSERT INTO introspection_events", "SELECT runs.id"])
def test_terminated_backends_neither_crash_the_brain_nor_deny_an_assignment(pg_engine, match):
    fleet = Fleet(pg_engine, {("rag", "embed"): echo})
    killer = BackendKiller(pg_engine, match, times=3)
    try:
        run_id = submit(fleet, "embed", {"text": "hello"})
        fleet.drain()
    finally:
        killer.close()
    assert killer.killed == 3
    assert run_row(fleet, run_id)["status"] == "completed"
    with pg_engine.connect() as conn:
        crashes = conn.execute(select(m.c.attempts, m.c.status).where(m.c.run_id == run_id,
                                                                      m.c.kind != "assignment")).all()
        kinds = [r.kind for r in conn.execute(select(bus_events.c.kind).where(bus_events.c.run_id == run_id))]
    assert crashes and all(r.attempts == 0 and r.status == "done" for r in crashes)
    assert "policy_denied" not in kinds and "event_rejected" not in kinds
    assert [o for _, _, o in fleet.trace].count("crashed") == 0


def test_a_brain_event_survives_more_kills_than_its_crash_budget(pg_engine):
    """Twice MAX_CRASHES dropped connections on the same event: it still applies, its crash count stays 0."""
    fleet = Fleet(pg_engine, {("rag", "embed"): echo})
    run_id = submit(fleet, "embed", {"text": "hello"})
    start = take(fleet, lambda d: d.task == TASK_DECIDE)
    killer = BackendKiller(pg_engine, "UPDATE runs", times=2 * brain_module.MAX_CRASHES)
    try:
        outcomes = []
        for _ in range(4):  # each handle retries up to six times, then leaves the event to the reclaimer
            try:
                outcomes.append(fleet.brain.handle(start.message_id))
                break
            except LedgerUnavailable:
                outcomes.append("left to the reclaimer")
    finally:
        killer.close()
    assert killer.killed == 2 * brain_module.MAX_CRASHES
    assert outcomes[-1] == "applied"
    with pg_engine.connect() as conn:
        row = conn.execute(select(m.c.attempts, m.c.status).where(m.c.id == start.message_id)).one()
    assert (row.attempts, row.status) == (0, "done")
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"


# -- SQLite: another connection holds the write lock --------------------------------------------------
class WriteLock:
    """Holds SQLite's write lock from a separate connection, as another process would."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        self.held = False

    def take(self):
        self.conn.execute("BEGIN IMMEDIATE")
        self.held = True

    def release(self):
        if self.held:
            self.conn.execute("ROLLBACK")
            self.held = False


@pytest.fixture
def locked_sqlite(tmp_path):
    """A migrated SQLite ledger whose engine gives up on a held lock after 20 ms, and a lock to hold."""
    from bus.migrate import upgrade

    path = tmp_path / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA busy_timeout=20")

    engine.dispose()
    lock = WriteLock(str(path))
    yield engine, lock
    lock.release()
    lock.conn.close()
    engine.dispose()


def test_a_locked_ledger_is_retried_not_counted_as_a_crash(locked_sqlite):
    engine, lock = locked_sqlite
    naps: list[float] = []

    def nap(seconds):  # the lock is released during the brain's second back-off
        naps.append(seconds)
        if len(naps) == 2:
            lock.release()

    fleet = Fleet(engine, {("rag", "embed"): echo})
    fleet.brain = Brain(engine=engine, publisher=fleet.publisher, registry=fleet.registry, shards=1,
                        clock=fleet.clock, sleep=nap)
    fleet.routes[TASK_DECIDE] = fleet.brain.handle
    run_id = submit(fleet, "embed", {"text": "hello"})
    start = take(fleet, lambda d: d.task == TASK_DECIDE)
    lock.take()
    assert fleet.brain.handle(start.message_id) == "applied"
    assert len(naps) == 2
    with engine.connect() as conn:
        assert conn.execute(select(m.c.attempts).where(m.c.id == start.message_id)).scalar_one() == 0
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"


def test_a_ledger_locked_through_every_retry_leaves_the_assignment_queued_not_denied(locked_sqlite):
    engine, lock = locked_sqlite
    fleet = Fleet(engine, {("rag", "embed"): echo})
    fleet.dispatcher = Dispatcher(engine=engine, publisher=fleet.publisher, clock=fleet.clock,
                                  sleep=lambda _s: None)
    fleet.routes[TASK_EXECUTE] = fleet.dispatcher.handle
    run_id = submit(fleet, "embed", {"text": "hello"})
    fleet.deliver(take(fleet, lambda d: d.task == TASK_DECIDE))
    admission = take(fleet, lambda d: d.task == TASK_EXECUTE)
    lock.take()
    with pytest.raises(LedgerUnavailable):
        fleet.dispatcher.handle(admission.message_id)
    lock.release()
    with engine.connect() as conn:
        row = conn.execute(select(m.c.status, m.c.last_error).where(m.c.id == admission.message_id)).one()
    assert (row.status, row.last_error) == ("queued", None)  # untouched: the reclaimer will send it again
    assert fleet.dispatcher.handle(admission.message_id) == "dispatched"
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"


def test_an_event_that_crashes_the_brain_still_counts_while_the_ledger_blips(locked_sqlite, monkeypatch):
    """Both at once: a poison event is still rejected after MAX_CRASHES, however many lock timeouts came
    between its crashes — those are never counted."""
    engine, lock = locked_sqlite
    fleet = Fleet(engine, {("rag", "embed"): echo})
    blips = []

    def nap(_seconds):
        blips.append(1)
        lock.release()

    fleet.brain = Brain(engine=engine, publisher=fleet.publisher, registry=fleet.registry, shards=1,
                        clock=fleet.clock, sleep=nap)
    run_id = submit(fleet, "embed", {"text": "hello"})
    start = take(fleet, lambda d: d.task == TASK_DECIDE)
    monkeypatch.setattr(brain_module, "plan", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("bug")))
    outcomes = []
    for _ in range(brain_module.MAX_CRASHES):
        lock.take()
        outcomes.append(fleet.brain.handle(start.message_id))
    assert outcomes == ["crashed"] * (brain_module.MAX_CRASHES - 1) + ["rejected"]
    assert len(blips) == brain_module.MAX_CRASHES
    assert run_row(fleet, run_id)["error"]["code"] == "brain.crashed"


def test_concurrent_kills_leave_no_event_counted(pg_engine):
    """Two brains on two threads while backends die under both: every event applies once, none is counted."""
    fleet = Fleet(pg_engine, {("rag", "embed"): echo})
    run_ids = [submit(fleet, "embed", {"text": str(i)}) for i in range(4)]
    starts = [take(fleet, lambda d: d.task == TASK_DECIDE) for _ in run_ids]
    other = Brain(engine=pg_engine, publisher=fleet.publisher, registry=fleet.registry, shards=1, clock=fleet.clock)
    killer = BackendKiller(pg_engine, "UPDATE runs", times=4)
    results: list[str] = []
    lock = threading.Lock()

    def work(brain):
        for start in starts:
            outcome = brain.handle(start.message_id)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=work, args=(b,)) for b in (fleet.brain, other)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        killer.close()
    assert sorted(results) == ["applied"] * 4 + ["duplicate"] * 4
    with pg_engine.connect() as conn:
        counted = conn.execute(select(m.c.attempts).where(m.c.id.in_([s.message_id for s in starts]))).scalars()
        assert set(counted) == {0}
    fleet.drain()
    assert {run_row(fleet, r)["status"] for r in run_ids} == {"completed"}
