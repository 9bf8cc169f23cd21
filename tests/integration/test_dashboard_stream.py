"""``GET /api/stream`` over real HTTP (uvicorn in a thread): authenticated, tenant-filtered, resumable (exactly, even
when ids commit out of order on PostgreSQL), bounded, capped per process and per principal, ended when the client
leaves or its key is revoked, and holding no worker thread while it waits."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import httpx
import pytest
from sqlalchemy import select, text

from bus.db import make_engine
from bus.introspection import IntrospectionEvent, write
from bus.migrate import upgrade
from bus.settings import Settings
from coordinator import keys
from coordinator.api import stream
from coordinator.live import latest_id
from coordinator.schema import approvals
from tests.support.api import ASK, app_of, make_key, serving
from tests.support.harness import Fleet, registry_of, settle, submit
from tests.support.services import unique
from tests.support.waiting import wait_until

THREADS = 3
"""The server's worker threads: fewer than the streams a test opens, so a stream that held one would starve."""


@dataclass
class Server:
    url: str
    fleet: Fleet


def _settings(root: Path) -> Settings:
    return Settings(home=root / "home", broker_url="memory://", policy_file=Path(os.devnull)).checked()


async def _few_threads() -> None:
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The API served by uvicorn with ``THREADS`` worker threads, over a harness fleet's SQLite ledger."""
    root = tmp_path_factory.mktemp("stream")
    engine = make_engine(f"sqlite:///{root / 'ledger.db'}")
    upgrade(engine)
    fleet = Fleet(engine, {}, registry=registry_of(ASK, builtin=True), settings=_settings(root))
    with serving(app_of(fleet), on_startup=_few_threads) as url:
        yield Server(url, fleet)
    engine.dispose()


class Frames:
    """One open stream, read by a thread into a list of ``(event, id, data)`` frames."""

    def __init__(self, url: str, key: str | None, *, params: dict | None = None, headers: dict | None = None):
        self.frames: list[tuple[str, int | None, dict]] = []
        self.ended = threading.Event()
        self.client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        self._request = self.client.build_request("GET", f"{url}/api/stream", params=params or {},
                                                  headers={**auth, **(headers or {})})
        self.response = self.client.send(self._request, stream=True)
        self.status = self.response.status_code
        self._lines: queue.Queue = queue.Queue()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = self.response.read()
            self.ended.set()

    def _read(self) -> None:
        event, event_id, data = "message", None, ""
        try:
            for line in self.response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "":
                    self.frames.append((event, event_id, json.loads(data) if data else {}))
                    event, event_id, data = "message", None, ""
        except (httpx.HTTPError, ValueError):
            pass
        finally:
            self.ended.set()

    def of(self, kind: str) -> list[dict]:
        return [data for event, _, data in self.frames if event == kind]

    def wait_for(self, found: Callable[[Frames], object], what: str, timeout: float = 15) -> object:
        return wait_until(lambda: found(self), timeout=timeout, message=what)

    def close(self) -> None:
        """Leave: shut the socket down first, so the reader thread's blocked read ends at once."""
        stream = self.response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.response.close()
        self.client.close()


@pytest.fixture
def opened():
    streams: list[Frames] = []

    def open_stream(*args, **kwargs) -> Frames:
        streams.append(Frames(*args, **kwargs))
        return streams[-1]

    yield open_stream
    for s in streams:
        s.close()


def _approval(fleet: Fleet, run_id: str) -> str:
    with fleet.engine.connect() as conn:
        return conn.execute(select(approvals.c.id).where(approvals.c.run_id == run_id)).scalar_one()


def _tenants() -> tuple[str, str]:
    return unique("mine-"), unique("theirs-")


def test_a_stream_needs_a_key_with_runs_read_and_a_run_it_may_see(server, opened):
    mine, theirs = _tenants()
    their_run = submit(server.fleet, "ask", tenant=theirs)
    settle(server.fleet)
    anonymous = opened(server.url, None)
    assert anonymous.status == 401 and json.loads(anonymous.body)["error"]["code"] == "auth.required"
    writer = opened(server.url, make_key(server.fleet.engine, mine, ["intents:write"]))
    assert writer.status == 403 and json.loads(writer.body)["error"]["code"] == "auth.scope"
    reader = make_key(server.fleet.engine, mine, ["runs:read"])
    other = opened(server.url, reader, params={"run_id": their_run})
    assert other.status == 404 and json.loads(other.body)["error"]["code"] == "run.unknown"
    assert theirs.encode() not in other.body


def test_a_tenants_stream_tells_only_its_own_runs_and_an_admins_tells_every_one(server, opened):
    mine, theirs = _tenants()
    key = make_key(server.fleet.engine, mine, ["runs:read"])
    admin = make_key(server.fleet.engine, unique("ops-"), ["admin"])
    live_mine = opened(server.url, key)
    live_all = opened(server.url, admin)
    for s in (live_mine, live_all):
        s.wait_for(lambda f: f.of("hello"), "hello")
    assert live_mine.of("hello")[0]["tenant"] == mine and live_all.of("hello")[0]["tenant"] is None
    theirs_run = submit(server.fleet, "ask", tenant=theirs)
    settle(server.fleet)
    mine_run = submit(server.fleet, "ask", tenant=mine)
    settle(server.fleet)
    live_mine.wait_for(lambda f: any(r["run_id"] == mine_run and r["status"] == "waiting" for r in f.of("run")),
                       "my run waiting")
    live_all.wait_for(lambda f: {r["run_id"] for r in f.of("run")} >= {mine_run, theirs_run}, "both runs")
    told = json.dumps(live_mine.frames)
    assert theirs_run not in told and theirs not in told
    assert {e["run_id"] for e in live_mine.of("trace")} == {mine_run}
    assert [a["change"] for a in live_mine.of("approval")] == ["requested"]
    assert all(e["category"] != "sql" for e in live_all.of("trace"))
    ids = [i for _, i, _ in live_mine.frames if i is not None]
    assert ids == sorted(ids)


def test_a_stream_resumes_after_the_last_event_id_and_reads_history_from_after_id(server, opened):
    mine, _theirs = _tenants()
    key = make_key(server.fleet.engine, mine, ["runs:read"])
    run_id = submit(server.fleet, "ask", tenant=mine)
    settle(server.fleet)
    history = opened(server.url, key, params={"run_id": run_id, "after_id": 0})
    history.wait_for(lambda f: f.of("run"), "the run's status")
    events = history.of("trace")
    assert len(events) >= 3 and all(e["run_id"] == run_id for e in events)
    middle = events[len(events) // 2]["id"]
    resumed = opened(server.url, key, params={"run_id": run_id, "after_id": 0}, headers={"Last-Event-ID": str(middle)})
    resumed.wait_for(lambda f: f.of("run"), "the resumed status")
    assert [e["id"] for e in resumed.of("trace")] == [e["id"] for e in events if e["id"] > middle]


def test_approval_and_run_status_changes_are_told_as_they_happen(server, opened):
    mine, _theirs = _tenants()
    key = make_key(server.fleet.engine, mine, ["runs:read", "approvals:decide"])
    run_id = submit(server.fleet, "ask", tenant=mine)
    settle(server.fleet)
    watching = opened(server.url, key, params={"run_id": run_id, "after_id": 0})
    watching.wait_for(lambda f: any(r["status"] == "waiting" for r in f.of("run")), "waiting")
    decided = httpx.post(f"{server.url}/api/approvals/{_approval(server.fleet, run_id)}/approve",
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert decided.status_code == 202
    settle(server.fleet)
    watching.wait_for(lambda f: any(r["status"] == "completed" for r in f.of("run")), "completed")
    assert [a["change"] for a in watching.of("approval")] == ["requested", "resolved"]
    assert watching.of("approval")[1]["status"] == "approved"
    assert [r["status"] for r in watching.of("run")] == ["waiting", "completed"]


def test_streams_are_capped_per_process_and_a_slot_is_freed_when_the_client_leaves(server, opened, monkeypatch):
    monkeypatch.setattr(stream, "SLOTS", stream.StreamSlots(2))
    key = make_key(server.fleet.engine, unique("cap-"), ["runs:read"])
    first, _second = opened(server.url, key), opened(server.url, key)
    for s in (first, _second):
        s.wait_for(lambda f: f.of("hello"), "hello")
    refused = opened(server.url, key)
    assert refused.status == 503 and json.loads(refused.body)["error"]["code"] == "stream.busy"
    assert refused.response.headers["retry-after"] == "5"
    first.close()
    wait_until(lambda: stream.SLOTS.open == 1, timeout=15, message="the server to notice the client left")
    again = opened(server.url, key)
    assert again.status == 200


def test_waiting_streams_hold_no_worker_thread(server, opened):
    key = make_key(server.fleet.engine, unique("idle-"), ["runs:read"])
    many = [opened(server.url, key) for _ in range(2 * THREADS)]
    for s in many:
        s.wait_for(lambda f: f.of("hello"), "every stream's hello")
    started = time.monotonic()
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200  # a sync route: it needs a thread
    assert httpx.get(f"{server.url}/api/runs", headers={"Authorization": f"Bearer {key}"}, timeout=10) \
        .status_code == 200
    assert time.monotonic() - started < 5
    assert all(not s.ended.is_set() for s in many)


def test_heartbeats_check_the_key_and_a_revoked_keys_stream_ends(server, opened, monkeypatch):
    monkeypatch.setattr(stream, "HEARTBEAT_S", 0.3)
    key = make_key(server.fleet.engine, unique("beat-"), ["runs:read"])
    watching = opened(server.url, key)
    watching.wait_for(lambda f: f.of("heartbeat"), "a heartbeat")
    with server.fleet.engine.begin() as conn:
        keys.revoke_key(conn, key.split("_")[1])
    watching.wait_for(lambda f: f.ended.is_set(), "the stream to end")
    assert watching.of("error")[-1]["code"] == "auth.invalid"


def test_a_cursor_past_any_id_is_refused_and_one_past_the_newest_is_clamped(server, opened):
    key = make_key(server.fleet.engine, unique("far-"), ["runs:read"])
    for params, headers in [({"after_id": 10**25}, {}), ({}, {"Last-Event-ID": str(10**25)}),
                            ({}, {"Last-Event-ID": "12x"})]:
        refused = opened(server.url, key, params=params, headers=headers)
        assert refused.status == 422, (params, headers)
        assert json.loads(refused.body)["error"]["code"] == "request.invalid"
    with server.fleet.engine.connect() as conn:
        newest = latest_id(conn)
    ahead = opened(server.url, key, params={"after_id": 2**62})
    hello = ahead.wait_for(lambda f: f.of("hello"), "hello")[0]
    assert hello["cursor"] <= newest
    run_id = submit(server.fleet, "ask", tenant=key_tenant(key, server))
    settle(server.fleet)
    ahead.wait_for(lambda f: any(r["run_id"] == run_id for r in f.of("run")), "the new run, past the clamped cursor")


def key_tenant(key: str, server: Server) -> str:
    """The tenant of ``key`` (as the API says)."""
    return httpx.get(f"{server.url}/api/me", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["tenant"]


def test_one_principal_cannot_take_every_slot(server, opened, monkeypatch):
    monkeypatch.setattr(stream, "SLOTS", stream.StreamSlots(10, per_principal=2))
    key = make_key(server.fleet.engine, unique("greedy-"), ["runs:read"])
    mine = [opened(server.url, key) for _ in range(2)]
    for s in mine:
        s.wait_for(lambda f: f.of("hello"), "hello")
    refused = opened(server.url, key)
    assert refused.status == 429 and json.loads(refused.body)["error"]["code"] == "stream.too_many"
    assert refused.response.headers["retry-after"] == "5"
    other = opened(server.url, make_key(server.fleet.engine, unique("other-"), ["runs:read"]))
    assert other.status == 200
    mine[0].close()
    wait_until(lambda: stream.SLOTS.open == 2, timeout=15, message="the server to notice the client left")
    assert opened(server.url, key).status == 200


def _marker(run_id: str, name: str) -> IntrospectionEvent:
    return IntrospectionEvent(f"operation.test.{name}", run_id, {"name": name})


def _markers(frames: Frames) -> list[tuple[str, int]]:
    return [(e["type"], e["id"]) for e in frames.of("trace") if e["type"].startswith("operation.test.")]


def test_on_postgresql_an_event_whose_id_commits_late_is_streamed_once_and_a_resume_brings_it(
        engine_url_for, tmp_path, opened, monkeypatch):
    """PostgreSQL takes an id at insert and shows the row at commit: the lower id is seen last."""
    monkeypatch.setattr(stream, "HEARTBEAT_S", 0.5)
    engine = make_engine(engine_url_for("postgres"))
    upgrade(engine)
    fleet = Fleet(engine, {}, registry=registry_of(ASK), settings=_settings(tmp_path))
    tenant = unique("late-")
    run_id = submit(fleet, "ask", tenant=tenant)
    settle(fleet)
    key = make_key(engine, tenant, ["runs:read"])
    try:
        with serving(app_of(fleet)) as url:
            watching = opened(url, key)
            watching.wait_for(lambda f: f.of("hello"), "hello")
            slow = engine.connect()
            try:
                slow_tx = slow.begin()
                write(slow, [_marker(run_id, "slow")], now=time.time())  # takes the lower id, commits last
                low_id = slow.execute(text("SELECT max(id) FROM introspection_events")).scalar_one()
                with engine.begin() as quick:
                    write(quick, [_marker(run_id, "quick")], now=time.time())
                watching.wait_for(_markers, "the quick event")
                [(_, quick_id)] = _markers(watching)
                assert quick_id > low_id
                [mark] = [i for kind, i, data in watching.frames if kind == "trace" and data["id"] == quick_id]
                assert mark < low_id  # the id a client resumes from: below the id still open
                slow_tx.commit()
            finally:
                slow.close()
            watching.wait_for(lambda f: len(_markers(f)) == 2, "the late event")
            beats = len(watching.of("heartbeat"))  # two more reads (a heartbeat follows a read): nothing told twice
            watching.wait_for(lambda f: len(f.of("heartbeat")) >= beats + 2, "two more reads")
            assert _markers(watching) == [("operation.test.quick", quick_id), ("operation.test.slow", low_id)]
            resumed = opened(url, key, headers={"Last-Event-ID": str(mark)})
            resumed.wait_for(lambda f: ("operation.test.slow", low_id) in _markers(f), "the late event on resume")
            for s in (watching, resumed):
                s.close()
    finally:
        engine.dispose()
