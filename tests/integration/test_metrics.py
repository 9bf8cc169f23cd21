"""The metrics of a fleet that ran a known set of runs, on SQLite and PostgreSQL: every family parsed with
Prometheus's parser and checked against what the runs did (counts, buckets, sums), the token and cost counters
equal to the usage the ledger settled, counters that never go down across a retention pass, ``promtool check
metrics`` on a real scrape, and the JSON cards (a tenant's key sees only its tenant)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from sqlalchemy import func, select

from bus import ledger
from bus.celery_app import TASK_DECIDE, TASK_WORK
from bus.errors import WorkFailed
from bus.schema import agent_messages as m
from bus.schema import bus_events
from bus.settings import Settings
from coordinator.metrics import cards, create_app
from coordinator.metrics.cards import percentile
from coordinator.metrics.fold import fold
from coordinator.retention import prune
from tests.support.api import app_of, http, make_key
from tests.support.harness import Clock, Fleet, registry_of, submit
from tests.support.prometheus import Samples, check_metrics, samples
from workers.handler import WorkResult

METERED = """
name: metered
start: work
nodes:
  work:
    kind: task
    route: {service: t, role: work}
    agent: {agent_id: w, model: gpt-x, budget: {maxTokens: 25, maxCostUsd: 1.0}}
    input: {mode: input.mode}
    retry: {maximum_attempts: 3, initial_interval_ms: 1000, backoff_coefficient: 1.0, jitter: 0.0}
    output: work
    next: done
  done: {kind: end}
"""
BANNED = METERED.replace("name: metered", "name: banned").replace("model: gpt-x", "model: banned-model")
WAIT_S = 0.3
"""Every attempt waits this long in its worker queue (dispatched → claimed)."""
RUN_S = 2.0
"""Every attempt runs this long."""
APPLY_S = 0.02
"""Every brain event is applied this long after it was due."""
TOKENS, COST = 10, 0.01
"""What every attempt meters (a greedy one meters three times as much and breaks its budget)."""
RUNS = [("acme", "ok"), ("zeta", "ok"), ("acme", "flaky"), ("acme", "broken"), ("acme", "greedy"),
        ("acme", "banned")]
"""The known set: two succeed at once (one of another tenant), one fails once then succeeds, one fails for good,
one breaks its budget, and one is denied at admission (its model is not allowed)."""


@dataclass
class Known:
    """A fleet that ran ``RUNS``, and its run ids by mode."""

    fleet: Fleet
    runs: dict[str, str]


def handler(clock: Clock):
    def work(ctx, payload):
        clock.now += RUN_S
        mode = payload["mode"]
        ctx.meter(tokens=TOKENS * (3 if mode == "greedy" else 1), cost_usd=COST)
        if mode == "broken":
            raise WorkFailed("broken for good", retryable=False)
        if mode == "flaky" and ctx.attempt == 1:
            raise WorkFailed("flaky once", retryable=True)
        return WorkResult(output={"mode": mode})
    return work


def drain_timed(fleet: Fleet) -> None:
    """Deliver in due order, each attempt waiting ``WAIT_S`` in its queue and each brain event ``APPLY_S``."""
    while (nxt := fleet.publisher.pop()) is not None:
        due, delivery = nxt
        fleet.clock.now = max(fleet.clock.now, due)
        fleet.clock.now += {TASK_WORK: WAIT_S, TASK_DECIDE: APPLY_S}.get(delivery.task, 0.0)
        fleet.deliver(delivery)


def known(engine) -> Known:
    """``RUNS``, one after the other, each drained before the next (so every time is exactly known)."""
    settings = replace(Settings(broker_url="memory://").checked(), allowed_models="gpt-x")
    clock = Clock()
    fleet = Fleet(engine, {("t", "work"): handler(clock)}, registry=registry_of(METERED, BANNED), settings=settings,
                  clock=clock)
    runs = {}
    for tenant, mode in RUNS:
        runs[mode if tenant == "acme" else f"{mode}-{tenant}"] = submit(
            fleet, "banned" if mode == "banned" else "metered", {"mode": mode}, tenant=tenant)
        drain_timed(fleet)
    return Known(fleet, runs)


def scrape(k: Known) -> Samples:
    """Fold, then one scrape of ``/metrics`` parsed with Prometheus's parser: sample name → labels → value."""
    fold(k.fleet.engine, clock=k.fleet.clock)
    return samples(metrics_text(k))


def metrics_app(k: Known):
    """The metrics server's app over ``k``'s ledger."""
    return create_app(k.fleet.engine, k.fleet.settings, publisher=k.fleet.publisher, registry=k.fleet.registry,
                      clock=k.fleet.clock)


def metrics_text(k: Known, scopes=("metrics:read",)) -> str:
    answer = http(metrics_app(k), make_key(k.fleet.engine, "ops", list(scopes))).get("/metrics")
    assert answer.status_code == 200, answer.text
    return answer.text


def one(found: Samples, name: str, **labels: str) -> float:
    return found.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_percentile():
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.9) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 0.5) == 50.0
    assert percentile([float(i) for i in range(1, 101)], 0.9) == 90.0


def test_every_family_counts_the_known_runs(engine):
    k = known(engine)
    found = scrape(k)
    route = {"route": "t.work"}
    assert one(found, "cogo_assignments_total", outcome="done", **route) == 3  # ok, ok (zeta), flaky
    assert one(found, "cogo_assignments_total", outcome="failed", **route) == 3  # broken, greedy, banned (denied)
    assert one(found, "cogo_assignments_total", outcome="dead", **route) == 0
    assert one(found, "cogo_assignments_first_attempt_done_total", **route) == 2
    assert one(found, "cogo_retries_total", **route) == 1
    assert one(found, "cogo_budget_violations_total", tenant="acme") == 1
    assert one(found, "cogo_admission_denials_total", code="policy.model_denied") == 1
    # Five runs reached a worker: six attempts (the flaky one twice), each waiting WAIT_S and running RUN_S.
    for name, seconds, below, above in (("cogo_queue_wait_seconds", WAIT_S, "0.25", "0.5"),
                                        ("cogo_assignment_duration_seconds", RUN_S, "1.0", "2.5")):
        assert one(found, f"{name}_count", **route) == 6
        assert one(found, f"{name}_sum", **route) == pytest.approx(6 * seconds)
        assert one(found, f"{name}_bucket", le=below, **route) == 0
        assert one(found, f"{name}_bucket", le=above, **route) == 6
        assert one(found, f"{name}_bucket", le="+Inf", **route) == 6
    # Every brain event applied APPLY_S after it was due: six starts (the ingress latency), four completions and
    # two failures reported by the worker, one denial reported by the dispatcher.
    assert {labels: v for labels, v in found["cogo_step_latency_seconds_count"].items()} == {
        (("event", "start"),): 6, (("event", "task_completed"),): 3, (("event", "task_failed"),): 3}
    assert one(found, "cogo_step_latency_seconds_bucket", event="start", le="0.01") == 0
    assert one(found, "cogo_step_latency_seconds_bucket", event="start", le="0.025") == 6
    assert one(found, "cogo_ingress_latency_seconds_count") == 6  # six root runs (a child's start: sources)
    assert one(found, "cogo_ingress_latency_seconds_sum") == pytest.approx(6 * APPLY_S)
    with engine.connect() as conn:
        audit = dict(conn.execute(select(bus_events.c.kind, func.count()).group_by(bus_events.c.kind)).all())
    assert {labels[0][1]: v for labels, v in found["cogo_bus_events_total"].items()} == audit
    assert found["cogo_agents_live"] == {(("route", "t.work"),): 1.0}
    assert one(found, "cogo_queue_oldest_age_seconds", route="t.work") == 0  # nothing waits
    assert found.get("cogo_runs_active", {}) == {}


def test_the_token_and_cost_counters_equal_the_usage_the_ledger_settled(engine):
    k = known(engine)
    found = scrape(k)
    with engine.connect() as conn:
        settled = conn.execute(select(m.c.tenant, func.sum(m.c.usage_tokens), func.sum(m.c.usage_cost_usd))
                               .where(m.c.kind == "assignment", m.c.status == ledger.SETTLED)
                               .group_by(m.c.tenant)).all()
        unsettled = conn.execute(select(func.count()).where(m.c.kind == "assignment",
                                                            m.c.status != ledger.SETTLED)).scalar()
    assert unsettled == 0
    assert {(t, int(tokens)) for t, tokens, _ in settled} == {("acme", 70), ("zeta", 10)}  # 10 + 20 + 10 + 30; 10
    for tenant, tokens, cost in settled:
        assert one(found, "cogo_tokens_total", tenant=tenant, model="gpt-x") == tokens
        assert one(found, "cogo_cost_usd_total", tenant=tenant, model="gpt-x") == pytest.approx(cost)


def test_counters_never_go_down_across_a_retention_pass(engine):
    k = known(engine)
    before = scrape(k)
    later = lambda: k.fleet.clock.now + 2 * 86400  # noqa: E731 - every run ended more than a day before
    assert prune(engine, retention_days=1, clock=later).runs == len(RUNS)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(bus_events)).scalar() == 0  # the audit log is gone
    after = scrape(k)
    counters = [name for name in before if name.endswith(("_total", "_bucket", "_sum", "_count"))]
    assert "cogo_assignments_total" in counters and "cogo_tokens_total" in counters
    for name in counters:
        for labels, value in before[name].items():
            assert after[name][labels] == value, (name, labels)  # folded before it was pruned: not lost, not twice
    # More runs after the prune only add.
    submit(k.fleet, "metered", {"mode": "ok"})
    drain_timed(k.fleet)
    more = scrape(k)
    assert one(more, "cogo_assignments_total", route="t.work", outcome="done") == \
        one(before, "cogo_assignments_total", route="t.work", outcome="done") + 1


def test_promtool_accepts_a_real_scrape(engine):
    k = known(engine)
    fold(engine, clock=k.fleet.clock)
    check_metrics(metrics_text(k))


def test_a_metrics_read_key_scrapes_and_does_nothing_else(engine):
    """Prometheus's key (``metrics:read``) reads ``/metrics`` and nothing of a run; an admin key scrapes too."""
    k = known(engine)
    fold(engine, clock=k.fleet.clock)
    assert "cogo_assignments_total" in metrics_text(k, ["metrics:read"])
    assert "cogo_assignments_total" in metrics_text(k, ["admin"])
    prometheus_key = make_key(engine, "ops", ["metrics:read"])
    reader = http(metrics_app(k), make_key(engine, "ops", ["runs:read"]))
    refused = reader.get("/metrics")  # runs:read reads the cards, not every tenant's counters
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "auth.scope")
    api, metrics = http(app_of(k.fleet), prometheus_key), http(metrics_app(k), prometheus_key)
    run_id = k.runs["ok"]
    for client, call in ((api, lambda c: c.get(f"/api/runs/{run_id}")), (api, lambda c: c.get("/api/runs")),
                         (api, lambda c: c.get(f"/api/runs/{run_id}/explain")),
                         (api, lambda c: c.post("/api/intents", json={"tenant": "ops", "intent": "metered",
                                                                      "payload": {"mode": "ok"}})),
                         (api, lambda c: c.post(f"/api/runs/{run_id}/cancel", json={})),
                         (api, lambda c: c.get("/api/keys")), (metrics, lambda c: c.get("/api/metrics/spend")),
                         (api, lambda c: c.get("/api/metrics/bus/latency"))):
        answer = call(client)
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "auth.scope"), answer.text


# -- the JSON cards ------------------------------------------------------------------------------------------
MONTH = {"window_s": 30 * 86400}


def cards_of(k: Known, tenant: str, scopes=("runs:read",), *, api: bool = False):
    app = app_of(k.fleet) if api else metrics_app(k)
    if api:
        app.state.clock = k.fleet.clock
    client = http(app, make_key(k.fleet.engine, tenant, list(scopes)))
    return {path: client.get(f"/api/metrics/{path}", params=MONTH if path != "spend" else None).json()
            for path in ("bus/latency", "workflows/summary", "spend", "targets")}


def test_the_cards_tell_the_known_runs_and_a_tenant_sees_only_its_own(engine):
    k = known(engine)
    fold(engine, clock=k.fleet.clock)
    for api in (False, True):  # the metrics server and the API answer the same cards
        admin = cards_of(k, "ops", ["admin"], api=api)
        acme, zeta = cards_of(k, "acme", api=api), cards_of(k, "zeta", api=api)
        latency = admin["bus/latency"]
        assert set(latency) == {"window_s", "routes", "queue_wait_ms", "run_ms"}
        assert latency["routes"]["t.work"]["queue_wait_ms"] == {"p50": pytest.approx(WAIT_S * 1000),
                                                               "p90": pytest.approx(WAIT_S * 1000), "n": 6}
        assert latency["run_ms"] == {"p50": pytest.approx(RUN_S * 1000), "p90": pytest.approx(RUN_S * 1000), "n": 6}
        assert acme["bus/latency"]["queue_wait_ms"]["n"] == 5 and zeta["bus/latency"]["queue_wait_ms"]["n"] == 1

        summary = admin["workflows/summary"]
        assert summary["runs"] == {"metered": {"completed": 3, "failed": 2}, "banned": {"failed": 1}}
        assert (summary["decision_quality"], summary["decision_quality_n"]) == (pytest.approx(2 / 6), 6)
        assert "first attempt" in summary["decision_quality_definition"]
        hours = summary["failures_by_hour"]
        assert len(hours) == 168 and sum(h["failed"] for h in hours) == 3
        assert [h["hour_start"] for h in hours] == sorted(h["hour_start"] for h in hours)
        assert hours[-1]["hour_start"] <= k.fleet.clock.now < hours[-1]["hour_start"] + 3600
        assert acme["workflows/summary"]["runs"] == {"metered": {"completed": 2, "failed": 2}, "banned": {"failed": 1}}
        assert zeta["workflows/summary"]["runs"] == {"metered": {"completed": 1}}
        assert (zeta["workflows/summary"]["decision_quality"], zeta["workflows/summary"]["decision_quality_n"]) == \
            (1.0, 1)
        assert sum(h["failed"] for h in zeta["workflows/summary"]["failures_by_hour"]) == 0

        spend = {(e["tenant"], e["model"]): (e["tokens"], e["cost_usd"])
                 for e in admin["spend"]["by_tenant_model"]}
        assert spend == {("acme", "gpt-x"): (70, pytest.approx(5 * COST)),
                         ("zeta", "gpt-x"): (10, pytest.approx(COST))}
        assert [e["tenant"] for e in zeta["spend"]["by_tenant_model"]] == ["zeta"]
        assert [e["tenant"] for e in acme["spend"]["by_tenant_model"]] == ["acme"]
        assert k.runs["ok-zeta"] not in str(acme) and k.runs["ok"] not in str(zeta)

        # seed 003's targets as the alert rules judge them: 3 of the 6 ended assignments failed (or were denied),
        # 2 of 6 done at their first attempt, every attempt waited WAIT_S; zeta's one assignment meets all three
        judged = {t["alert"]: t for t in admin["targets"]["targets"]}
        assert {a: (t["value"], t["ok"], t["n"]) for a, t in judged.items()} == {
            "CogoBusFailureRateHigh": (pytest.approx(0.5), False, 6),
            "CogoQueueWaitHigh": (pytest.approx(WAIT_S), WAIT_S < 5, 6),
            "CogoDecisionQualityLow": (pytest.approx(2 / 6), False, 6)}
        assert [(t["value"], t["ok"]) for t in zeta["targets"]["targets"]] == [(0.0, True), (pytest.approx(WAIT_S),
                                                                                            WAIT_S < 5), (1.0, True)]


def test_a_small_tenants_cards_are_whole_however_busy_another_tenant_is(engine, monkeypatch):
    """A tenant's rows are filtered in the query (through ``bus_events(tenant, kind, created_at)``), before the
    per-kind limit: a busier tenant's newer rows never crowd them out."""
    k = known(engine)
    monkeypatch.setattr(cards, "SAMPLE", 5)
    busy = {"route": "t.work", "model": "gpt-x", "end": "failed", "wait_s": 9.0, "run_s": 9.0}
    with engine.begin() as conn:  # more closing rows of another tenant than a card reads of a kind, all newer
        conn.execute(bus_events.insert(), [{"message_id": f"busy-{i}", "tenant": "busy", "kind": "execute_failed",
                                            "attempt": 1, "detail": busy, "created_at": k.fleet.clock.now - 1}
                                           for i in range(2 * cards.SAMPLE)])
    zeta = cards_of(k, "zeta")
    assert zeta["bus/latency"]["queue_wait_ms"] == {"p50": pytest.approx(WAIT_S * 1000),
                                                    "p90": pytest.approx(WAIT_S * 1000), "n": 1}
    summary = zeta["workflows/summary"]
    assert (summary["decision_quality"], summary["decision_quality_n"]) == (1.0, 1)
    assert [(t["value"], t["n"]) for t in zeta["targets"]["targets"]] == [(0.0, 1), (pytest.approx(WAIT_S), 1),
                                                                          (1.0, 1)]
    admin = cards_of(k, "ops", ["admin"])  # every tenant's: the newest SAMPLE of each kind, the busy ones
    assert admin["bus/latency"]["queue_wait_ms"]["p50"] == pytest.approx(9000.0)
