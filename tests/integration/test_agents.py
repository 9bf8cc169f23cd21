"""The agent registry (``bus/agents.py``) on both ledgers, the ``agents`` admission policy's admit, deny and defer
paths (``coordinator/admission/agents.py``) asked directly and through the in-process fleet, and
``GET /api/agents``."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select

from bus import agents
from bus.agents import Agent, Presence
from bus.envelope import Assignment
from bus.schema import agent_messages as m
from bus.schema import agents as agents_table
from bus.settings import Settings
from coordinator.admission import Ask, Setup
from coordinator.admission.agents import AgentsPolicy
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, events, registry_of, run_row, settle, submit
from workers.handler import WorkResult

T0 = 1_800_000_000.0
HB = 2.0


def agent(process: str = "cogo-codegen-service", routes=("codegen.generate",), pid: int = 100, **kw) -> Agent:
    return Agent(process, routes=tuple(routes), hostname="host-a", pid=pid, software="test", heartbeat_s=HB, **kw)


def listed(engine, now: float) -> dict[str, dict]:
    with engine.connect() as conn:
        return {a["agent_id"]: a for a in agents.list_agents(agents.read(conn), now=now)}


# -- the registry -------------------------------------------------------------------------------------------
def test_an_agent_registers_heartbeats_goes_busy_and_idle_and_unregisters(engine):
    a = agent()
    assert a.agent_id == "cogo-codegen-service@host-a:100"
    with engine.begin() as conn:
        agents.register(conn, a, now=T0)
    row = listed(engine, T0 + 1)[a.agent_id]
    assert (row["state"], row["alive"], row["running"], row["routes"], row["capacity"]) == (
        "idle", True, 0, ["codegen.generate"], 1)
    assert row["version"] == "1" and row["models"] == [] and row["heartbeat_age_s"] == 1

    with engine.begin() as conn:
        assert agents.heartbeat(conn, a.agent_id, running=1, done=4, now=T0 + 2)
    row = listed(engine, T0 + 2)[a.agent_id]
    assert (row["state"], row["running"], row["assignments_done"], row["heartbeat_at"]) == ("busy", 1, 4, T0 + 2)

    with engine.begin() as conn:
        assert agents.heartbeat(conn, a.agent_id, running=0, done=5, now=T0 + 4)
    assert listed(engine, T0 + 4)[a.agent_id]["state"] == "idle"

    with engine.begin() as conn:
        assert agents.unregister(conn, a.agent_id, now=T0 + 5)
        assert not agents.unregister(conn, a.agent_id, now=T0 + 6)  # already stopped
        assert not agents.heartbeat(conn, a.agent_id, running=0, done=5, now=T0 + 6)  # a stopped agent stays so
    row = listed(engine, T0 + 500)[a.agent_id]
    assert (row["state"], row["alive"], row["stopped_at"], row["assignments_done"]) == ("stopped", False, T0 + 5, 5)


def test_an_agent_that_misses_three_heartbeats_is_gone_until_it_beats_again(engine):
    a = agent()
    with engine.begin() as conn:
        agents.register(conn, a, now=T0)
    assert listed(engine, T0 + 3 * HB)[a.agent_id]["state"] == "idle"  # three intervals: not yet
    gone = listed(engine, T0 + 3 * HB + 0.5)[a.agent_id]
    assert (gone["state"], gone["alive"]) == ("gone", False)
    with engine.begin() as conn:
        assert agents.heartbeat(conn, a.agent_id, running=0, done=0, now=T0 + 10)
    assert listed(engine, T0 + 10)[a.agent_id]["alive"]


def test_registration_prunes_agents_stopped_or_gone_for_a_day(engine):
    old_stopped, old_gone, recent = agent(pid=1), agent(pid=2), agent(pid=3)
    with engine.begin() as conn:
        for a in (old_stopped, old_gone, recent):
            agents.register(conn, a, now=T0)
        agents.unregister(conn, old_stopped.agent_id, now=T0 + 1)
        agents.heartbeat(conn, recent.agent_id, running=0, done=0, now=T0 + agents.KEEP_S)
        agents.register(conn, agent(pid=4), now=T0 + agents.KEEP_S + 2)
    assert sorted(listed(engine, T0 + agents.KEEP_S + 2)) == [recent.agent_id, agent(pid=4).agent_id]


def test_live_routes_sum_the_capacity_models_and_versions_of_live_agents_only(engine):
    any_model = agent(pid=1, routes=("codegen.generate", "rag.embed"), capacity=2)
    one_model = agent(pid=2, models=("m1",), version="2")
    dead = agent(pid=3, routes=("kg.build",))
    with engine.begin() as conn:
        for a in (any_model, one_model, dead):
            agents.register(conn, a, now=T0)
        agents.heartbeat(conn, any_model.agent_id, running=0, done=0, now=T0 + 10)
        agents.heartbeat(conn, one_model.agent_id, running=0, done=0, now=T0 + 10)
        routes = agents.live_routes(conn, now=T0 + 11)

    generate = routes["codegen.generate"]
    assert (generate.live, generate.capacity, generate.versions, generate.models) == (2, 3, {"1", "2"}, None)
    assert routes["rag.embed"].capacity == 2
    assert (routes["kg.build"].live, routes["kg.build"].last_seen_at) == (0, T0)  # known, but gone
    assert {r: k.capacity for r, k in routes.items()} == {"codegen.generate": 3, "rag.embed": 2, "kg.build": 0}
    with engine.begin() as conn:
        agents.unregister(conn, any_model.agent_id, now=T0 + 12)
        generate = agents.live_routes(conn, now=T0 + 12)["codegen.generate"]
    assert (generate.live, generate.models, generate.serves_model("m1"), generate.serves_model("m2")) == (
        1, {"m1"}, True, False)


def test_presence_counts_what_runs_in_memory_and_its_heartbeat_writes_it(engine):
    clock = SimpleNamespace(now=T0)
    presence = Presence(engine, agent(), clock=lambda: clock.now).start(heartbeats=False)
    seen = []

    def handle(message_id: str) -> str:
        presence.beat()  # a heartbeat while the assignment runs
        seen.append(listed(engine, clock.now)[presence.agent.agent_id]["state"])
        return "done"

    tracked = presence.track(handle)
    assert tracked("a1") == "done" and tracked("a2") == "done"
    assert seen == ["busy", "busy"]
    clock.now += HB
    presence.beat_if_due()
    row = listed(engine, clock.now)[presence.agent.agent_id]
    assert (row["state"], row["running"], row["assignments_done"]) == ("idle", 0, 2)

    with engine.begin() as conn:  # the row vanished (pruned, a fresh ledger): the next heartbeat registers again
        conn.execute(agents_table.delete())
    clock.now += HB
    presence.beat_if_due()
    assert listed(engine, clock.now)[presence.agent.agent_id]["assignments_done"] == 2

    presence.stop()
    presence.beat()  # nothing once stopped
    row = listed(engine, clock.now + 100)[presence.agent.agent_id]
    assert (row["state"], row["assignments_done"]) == ("stopped", 2)


# -- the policy, asked directly ---------------------------------------------------------------------------------
def ask(conn, *, route="codegen.generate", now=T0, since=T0, first=True, model="cogo-local", version="1") -> Ask:
    """An assignment that has waited for an agent since ``since`` (None: it waits for nothing yet)."""
    service, role = route.split(".")
    row = SimpleNamespace(service=service, role=role, created_at=T0 - 1000, updated_at=now,
                          waiting_for=None if since is None else "agents.no_available_agent", waiting_since=since)
    return Ask(conn=conn, row=row, assignment=Assignment(agent_id="x", model=model, version=version), now=now,
               first=first)


def policy(routes=(("codegen", "generate"),), wait_s: float = 60.0) -> AgentsPolicy:
    return AgentsPolicy(Setup(Settings(agent_wait_s=wait_s), frozenset(routes)))


def test_a_route_nobody_declares_or_ever_served_is_denied_at_once(engine):
    with engine.connect() as conn:
        verdict = policy().check(ask(conn, route="codegen.nope"))
    assert (verdict.admitted, verdict.deferred, verdict.code) == (False, False, "agents.no_agent_type")
    assert verdict.reason.startswith("no agent type serves codegen.nope")


def test_a_declared_route_waits_for_its_first_agent_then_is_denied(engine):
    p = policy(wait_s=60)
    with engine.connect() as conn:
        waiting = p.check(ask(conn, now=T0 + 5))
        late = p.check(ask(conn, now=T0 + 60))
    assert (waiting.deferred, waiting.code) == (True, "agents.no_available_agent")
    assert waiting.reason == ("no live agent serves codegen.generate (none has registered yet); "
                              "waiting up to 60 s")
    assert waiting.detail["deadline"] == T0 + 60
    assert (late.admitted, late.deferred, late.code) == (False, False, "agents.no_available_agent")


def test_a_route_served_once_is_known_even_when_no_process_declares_it(engine):
    with engine.begin() as conn:
        agents.register(conn, agent(routes=("test.slow",)), now=T0)
        agents.unregister(conn, agent(routes=("test.slow",)).agent_id, now=T0 + 1)
    with engine.connect() as conn:
        verdict = policy().check(ask(conn, route="test.slow", now=T0 + 2))
    assert (verdict.deferred, verdict.code) == (True, "agents.no_available_agent")
    assert "no live agent serves test.slow (last seen at " in verdict.reason


def test_a_live_agent_admits_and_its_disappearance_makes_work_wait_then_fail(engine):
    with engine.begin() as conn:
        agents.register(conn, agent(), now=T0)
    p = policy(wait_s=30)
    with engine.connect() as conn:
        assert p.check(ask(conn, now=T0 + 1)).admitted
        # gone (no heartbeat for three intervals): created at T0 + 10, it waits until T0 + 40
        gone = p.check(ask(conn, now=T0 + 10, since=T0 + 10))
        denied = p.check(ask(conn, now=T0 + 40, since=T0 + 10))
    assert (gone.deferred, gone.code, gone.detail["last_seen_at"]) == (True, "agents.no_available_agent", T0)
    assert (denied.deferred, denied.code, denied.detail["waited_s"]) == (False, "agents.no_available_agent", 30)


def test_a_wait_for_an_agent_starts_when_it_starts_not_when_the_assignment_was_created(engine):
    # Created long ago (a backlog found at a restart, a re-queued dead letter, a retry): its wait starts now.
    p = policy(wait_s=30)
    with engine.connect() as conn:
        fresh = p.check(ask(conn, now=T0 + 100, since=None, first=False))
        going_on = p.check(ask(conn, now=T0 + 100, since=T0 + 90))
    assert (fresh.deferred, fresh.detail["deadline"]) == (True, T0 + 130)
    assert (going_on.deferred, going_on.detail["deadline"]) == (True, T0 + 120)


@pytest.mark.parametrize("model, version, what", [("gpt-x", "1", "model 'gpt-x'"), ("m1", "7", "version '7'")])
def test_work_no_live_agent_can_run_waits_then_is_refused_with_its_own_code(engine, model, version, what):
    with engine.begin() as conn:
        agents.register(conn, agent(models=("m1",)), now=T0)
    p = policy(wait_s=10)
    with engine.connect() as conn:
        assert p.check(ask(conn, now=T0 + 1, model="m1")).admitted
        waiting = p.check(ask(conn, now=T0 + 1, model=model, version=version))
        denied = p.check(ask(conn, now=T0 + 5, since=T0 - 5, model=model, version=version))
    assert (waiting.deferred, waiting.code) == (True, "agents.no_matching_agent")
    assert f"no live agent of codegen.generate serves {what}" in waiting.reason
    assert (denied.deferred, denied.code) == (False, "agents.no_matching_agent")


def test_the_registry_is_read_at_most_once_a_second(engine):
    p = policy()
    with engine.connect() as conn:
        statements = []
        event.listen(conn, "before_cursor_execute",
                     lambda *args: statements.append(args[2]) if "FROM agents" in args[2] else None)
        assert p.check(ask(conn, now=T0)).deferred
        assert len(statements) == 1
        conn.commit()
        with engine.begin() as other:
            agents.register(other, agent(), now=T0)
        assert p.check(ask(conn, now=T0 + 0.5)).deferred  # the cached read, no statement
        assert len(statements) == 1
        assert p.check(ask(conn, now=T0 + 1.0)).admitted  # read again: the new agent admits
        assert len(statements) == 2
        assert p.registry.routes(conn, T0 + 1.0)["codegen.generate"].capacity == 1


# -- the policy in the in-process fleet --------------------------------------------------------------------------
NOPE = """
name: nope
start: work
nodes:
  work: {kind: task, route: {service: codegen, role: nope}, agent: {agent_id: w}, next: done}
  done: {kind: end}
"""
WORK = """
name: work
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, next: done}
  done: {kind: end}
"""


def fleet_with_agents(engine, wait_s: float = 30.0) -> Fleet:
    settings = replace(Settings(broker_url="memory://").checked(), agent_wait_s=wait_s,
                       admission_policies="models,coordinator.admission.agents:AgentsPolicy,budgets")
    return Fleet(engine, {("t", "work"): lambda ctx, p: WorkResult(output={"ok": True})},
                 registry=registry_of(NOPE, WORK), settings=settings)


def test_the_in_process_fleet_registers_and_its_work_is_admitted(engine):
    fleet = fleet_with_agents(engine)
    run_id = submit(fleet, "work")
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"
    assert listed(engine, fleet.clock.now)[fleet.agent.agent.agent_id]["routes"] == ["t.work"]


def test_an_undeclared_route_fails_its_run_with_no_agent_type(engine):
    fleet = fleet_with_agents(engine)
    run_id = submit(fleet, "nope")
    fleet.drain()
    run = run_row(fleet, run_id)
    assert run["status"] == "failed" and "agents.no_agent_type" in str(run["error"])


def test_work_waits_while_its_only_agent_is_stopped_and_fails_after_the_wait(engine):
    fleet = fleet_with_agents(engine, wait_s=30)
    fleet.agent.stop()
    run_id = submit(fleet, "work")
    fleet.drain()
    deferred = events(fleet, run_id, "dispatch.assignment.deferred")
    assert deferred and deferred[0]["data"]["code"] == "agents.no_available_agent"
    assert deferred[0]["data"]["message"].startswith("no live agent serves t.work (last seen at ")
    run = run_row(fleet, run_id)
    assert run["status"] == "failed" and "agents.no_available_agent" in str(run["error"])
    with engine.connect() as conn:
        assert conn.execute(select(m.c.attempts).where(m.c.service == "t")).scalar_one() == 0  # no attempt used


def test_work_waiting_for_an_agent_runs_once_one_registers(engine):
    fleet = fleet_with_agents(engine, wait_s=30)
    fleet.agent.stop()
    run_id = submit(fleet, "work")
    settle(fleet)  # started, and its assignment deferred
    assert events(fleet, run_id, "dispatch.assignment.deferred")
    fleet.agent = Presence(engine, agent(routes=("t.work",), pid=7), clock=fleet.clock).start(heartbeats=False)
    fleet.drain()
    assert run_row(fleet, run_id)["status"] == "completed"


# -- the API ----------------------------------------------------------------------------------------------------
def test_get_agents_lists_each_agent_and_route_for_admins_only(engine):
    import time

    fleet = fleet_with_agents(engine)
    now = time.time()
    with engine.begin() as conn:
        agents_table_rows = conn.execute(select(agents_table.c.agent_id)).scalars().all()
        assert agents_table_rows == [fleet.agent.agent.agent_id]
        conn.execute(agents_table.delete())
        agents.register(conn, agent(), now=now)
        agents.register(conn, agent(pid=2, routes=("t.work",)), now=now - 60)
    answer = http(app_of(fleet), make_key(engine, "ops")).get("/api/agents").json()
    by_id = {a["agent_id"]: a for a in answer["agents"]}
    assert by_id[agent().agent_id]["state"] == "idle" and by_id[agent(pid=2).agent_id]["state"] == "gone"
    assert by_id[agent().agent_id]["heartbeat_at_iso"].endswith("Z")
    routes = {r["route"]: r for r in answer["routes"]}
    assert (routes["codegen.generate"]["live"], routes["codegen.generate"]["capacity"]) == (1, 1)
    assert (routes["t.work"]["live"], routes["t.work"]["last_seen_at"]) == (0, now - 60)
    assert routes["codegen.nope"]["last_seen_at"] is None  # a workflow's route no agent ever served
    forbidden = http(app_of(fleet), make_key(engine, "acme", scopes=("runs:read",))).get("/api/agents")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "auth.scope"
