"""Admission as a list of policies: concurrency slots from the ledger's rows, rates, fair shares, and how the
dispatcher combines and explains their answers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select

from bus.errors import ConfigError
from bus.schema import agent_messages as m
from bus.schema import bus_events
from bus.settings import Settings
from coordinator.admission import ADMIT, Setup, build, defer, deny, evaluate
from coordinator.admission.fairness import share
from coordinator.admission.table import parse
from coordinator.explain import explain
from coordinator.schema import rate_buckets, tenant_spend
from coordinator.store import run_view
from tests.support.harness import Fleet, registry_of, submit
from workers.handler import WorkResult

FAN = """
name: fan
start: fan
nodes:
  fan: {kind: foreach, items: "input.items", body: work, join: all}
  work:
    kind: task
    route: {service: rag, role: embed}
    agent: {agent_id: w}
    next: all
  all: {kind: join, mode: all, next: done}
  done: {kind: end}
"""

OK = {("rag", "embed"): lambda ctx, p: WorkResult(output={})}


def _fleet(engine, tmp_path, table: str, **kw) -> Fleet:
    path = tmp_path / "policy.yaml"
    path.write_text(table)
    settings = Settings(broker_url="memory://", policy_file=path).checked()
    return Fleet(engine, kw.pop("handlers", OK), registry=registry_of(FAN), settings=settings, **kw)


def _holding(fleet: Fleet, **where) -> int:
    with fleet.engine.connect() as conn:
        q = select(m.c.id).where(m.c.kind == "assignment", m.c.status.in_(("dispatched", "running")))
        for column, value in where.items():
            q = q.where(m.c[column] == value)
        return len(conn.execute(q).all())


def _audit(fleet: Fleet, kind: str) -> list:
    with fleet.engine.connect() as conn:
        return conn.execute(select(bus_events).where(bus_events.c.kind == kind).order_by(bus_events.c.id)).all()


# -- combining answers ------------------------------------------------------------------------------------
class _Says:
    def __init__(self, verdict, takes=False):
        self.verdict, self.takes, self.asked = verdict, takes, 0

    def check(self, ask):
        self.asked += 1
        return self.verdict


def test_a_denial_wins_over_a_deferral_and_nothing_is_taken_for_an_assignment_that_waits():
    waits, taker = _Says(defer("x.wait", "later")), _Says(ADMIT, takes=True)
    assert evaluate([waits, taker], None).code == "x.wait"
    assert taker.asked == 0  # a policy that takes (a rate's token) is not asked once another said wait
    assert evaluate([waits, _Says(deny("x.no", "never"))], None).code == "x.no"
    assert evaluate([_Says(ADMIT), _Says(ADMIT)], None).admitted


def test_policies_are_named_in_one_setting_and_an_unknown_one_is_a_config_error():
    setup = Setup(Settings(admission_policies="models, budgets,coordinator.admission.rates:RatePolicy"))
    assert [p.name for p in build(setup)] == ["models", "budgets", "rate"]
    with pytest.raises(ConfigError, match="nope"):
        build(Setup(Settings(admission_policies="nope")))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        build(Setup(Settings(admission_policies="coordinator.admission.rates:Nope")))


def test_the_policy_table_is_checked_field_by_field():
    table = parse("tenants: {acme: {maxConcurrent: 4, weight: 2}}\nroutes: {'*': {maxConcurrent: 8}}")
    assert table.tenant("acme").max_concurrent == 4 and table.tenant("other").max_concurrent is None
    assert table.route("rag.embed").max_concurrent == 8 and table.limits_concurrency
    with pytest.raises(ConfigError, match="maxConcurrent"):
        parse("tenants: {acme: {maxConcurrent: 0}}")
    with pytest.raises(ConfigError):
        parse("tenants: {acme: {maxConcurent: 3}}")  # a typo is an error, not a silently absent limit


# -- concurrency -------------------------------------------------------------------------------------------
def test_a_tenant_never_holds_more_slots_than_its_limit_and_the_rest_wait_with_the_reason_said(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "tenants: {acme: {maxConcurrent: 2}}")
    run_id = submit(fleet, "fan", {"items": list(range(6))})
    seen: list[int] = []
    explained: list[str] = []

    def watch(_delivery) -> bool:
        seen.append(_holding(fleet, tenant="acme"))
        if not explained and _audit(fleet, "execute_deferred"):
            with engine.connect() as conn:
                explained.append(explain(conn, run_id)["summary"])
        return False

    started = fleet.clock.now
    fleet.drain(skip=watch)
    assert max(seen) == 2
    with engine.connect() as conn:
        ended_at = run_view(conn, run_id)["ended_at"]
    # Each settlement woke the next waiting assignment: none sat out its re-check delay (the fleet's clock).
    assert ended_at - started < 1.0
    assert "tenant acme is at its limit of 2 concurrent assignments" in explained[0]
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
        attempts = conn.execute(select(m.c.attempts).where(m.c.kind == "assignment")).scalars().all()
    assert attempts == [1] * 6  # waiting consumed no attempt
    deferred = _audit(fleet, "execute_deferred")
    assert deferred and all(r.detail["code"] == "concurrency.tenant" for r in deferred)
    assert len({r.message_id for r in deferred}) == len(deferred)  # said once per wait, not at every re-check


def test_a_route_limit_per_tenant_and_other_tenants_are_untouched(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "routes: {rag.embed: {maxConcurrentPerTenant: 1}}")
    a = submit(fleet, "fan", {"items": [1, 2, 3]}, tenant="acme")
    b = submit(fleet, "fan", {"items": [1, 2, 3]}, tenant="globex")
    most = {"acme": 0, "globex": 0}

    def watch(_d) -> bool:
        for t in most:
            most[t] = max(most[t], _holding(fleet, tenant=t))
        return False

    fleet.drain(skip=watch)
    assert most == {"acme": 1, "globex": 1}
    codes = {r.detail["code"] for r in _audit(fleet, "execute_deferred")}
    assert codes == {"concurrency.route_tenant"}
    with engine.connect() as conn:
        assert {run_view(conn, r)["status"] for r in (a, b)} == {"completed"}


def test_no_limit_set_means_no_statement_and_no_wait(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "")
    run_id = submit(fleet, "fan", {"items": list(range(5))})
    fleet.drain()
    assert _audit(fleet, "execute_deferred") == []
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"


def test_a_limit_edited_while_work_waits_applies_at_the_next_check(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "tenants: {acme: {maxConcurrent: 1}}")
    submit(fleet, "fan", {"items": list(range(4))})
    for _ in range(4):  # start, fan-out, the first admissions
        due, d = fleet.publisher.pop()
        fleet.clock.now = max(fleet.clock.now, due)
        fleet.deliver(d)
    (tmp_path / "policy.yaml").write_text("tenants: {acme: {maxConcurrent: 3}}")
    fleet.clock.now += 2  # the table is looked at again at most once a second
    most = []
    fleet.drain(skip=lambda _d: most.append(_holding(fleet, tenant="acme")) and False)
    assert 1 < max(most) <= 3  # past the old limit, which no restart had to lift


# -- rates -------------------------------------------------------------------------------------------------
def test_a_tenant_rate_spaces_admissions_and_waits_with_its_reason(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "tenants: {acme: {ratePerS: 1, burst: 1}}")
    run_id = submit(fleet, "fan", {"items": [1, 2, 3]})
    explained: list[str] = []

    def watch(_d) -> bool:
        if not explained and _audit(fleet, "execute_deferred"):
            with engine.connect() as conn:
                explained.append(explain(conn, run_id)["summary"])
        return False

    fleet.drain(skip=watch)
    times = [r.created_at for r in _audit(fleet, "execute_enqueued")]
    assert len(times) == 3 and all(b - a >= 0.99 for a, b in zip(times, times[1:], strict=False))
    assert "tenant acme is at its rate of 1 assignments/s (burst 1)" in explained[0]
    assert {r.detail["code"] for r in _audit(fleet, "execute_deferred")} == {"rate.limited"}
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"


def test_a_model_rate_is_shared_by_every_tenant(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "models: {cogo-local: {ratePerS: 2, burst: 1}}")
    submit(fleet, "fan", {"items": [1, 2]}, tenant="acme")
    submit(fleet, "fan", {"items": [1, 2]}, tenant="globex")
    fleet.drain()
    times = sorted(r.created_at for r in _audit(fleet, "execute_enqueued"))
    assert len(times) == 4 and all(b - a >= 0.49 for a, b in zip(times, times[1:], strict=False))
    assert {r.detail["model"] for r in _audit(fleet, "execute_deferred")} == {"cogo-local"}


def test_no_token_is_taken_for_an_assignment_another_policy_makes_wait(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "tenants: {acme: {maxConcurrent: 1, ratePerS: 100, burst: 100}}")
    submit(fleet, "fan", {"items": list(range(5))})
    fleet.drain()
    with engine.connect() as conn:
        tokens = conn.execute(select(rate_buckets.c.tokens)
                              .where(rate_buckets.c.tenant == "admission/tenant/acme")).scalar()
    # Five admissions took five tokens; the deferrals for concurrency in between took none (refill aside).
    assert tokens == pytest.approx(95, abs=1)


# -- fair shares -------------------------------------------------------------------------------------------
def test_on_a_full_route_the_tenant_that_spent_less_goes_first(engine, tmp_path):
    fleet = _fleet(engine, tmp_path, "routes: {rag.embed: {maxConcurrent: 2}}")
    submit(fleet, "fan", {"items": list(range(30))}, tenant="flood")
    for _ in range(6):  # the flood's fan-out is planned and fills the route
        due, d = fleet.publisher.pop()
        fleet.clock.now = max(fleet.clock.now, due)
        fleet.deliver(d)
    small = [submit(fleet, "fan", {"items": [1]}, tenant="small") for _ in range(3)]
    most: list[int] = []
    fleet.drain(skip=lambda _d: most.append(_holding(fleet, service="rag")) and False)
    admitted = [r.tenant for r in _audit(fleet, "execute_enqueued")]
    first_small = admitted.index("small")
    # Every small run is admitted at the first free slots once it waits: the flood's 28 waiting branches do not
    # go first, and never more than two run at once.
    assert "small" not in admitted[first_small + 4:], admitted
    assert admitted[:first_small].count("flood") <= 4
    assert max(most) == 2
    with engine.connect() as conn:
        assert {run_view(conn, r)["status"] for r in small} == {"completed"}


@pytest.mark.parametrize("weights", ["", "tenants: {big: {weight: 100}}"])
def test_contested_slots_go_to_the_tenant_with_the_lower_spend_weighted_share(engine, tmp_path, weights):
    fleet = _fleet(engine, tmp_path, "routes: {rag.embed: {maxConcurrent: 1}}\n" + weights)
    submit(fleet, "fan", {"items": list(range(20))}, tenant="big")  # big has spent recently
    fleet.drain()
    before = len(_audit(fleet, "execute_enqueued"))
    for tenant in ("big", "light"):
        submit(fleet, "fan", {"items": list(range(8))}, tenant=tenant)
    yielded: set[str] = set()

    def watch(_d) -> bool:
        with engine.connect() as conn:
            yielded.update(conn.execute(select(m.c.tenant).where(m.c.waiting_for == "concurrency.yield")).scalars())
        return False

    fleet.drain(skip=watch)
    order = [r.tenant for r in _audit(fleet, "execute_enqueued")][before:]
    if not weights:
        # light's share (it ran nothing) stays below big's (20 assignments) for all its 8: big's slots wait.
        first = order.index("light")
        assert first <= 1 and order[first:first + 8] == ["light"] * 8, order  # at most the slot big held first
        assert yielded == {"big"}
    else:
        # Weighted 100 to 1, big's 20 assignments weigh less than one of light's: once light ran one, light waits.
        assert order.count("light") == 8 and order[2:9] == ["big"] * 7, order


def test_a_share_is_spend_divided_by_weight():
    assert share(1.0, 0, 2.0) == 0.5
    assert share(0.0, 10, 1.0) < share(0.0, 11, 1.0)
    assert share(1.0, 10, 10.0) < share(1.0, 10, 1.0)


def test_retry_wait_rows_are_deferred_without_losing_their_status(engine, tmp_path):
    calls = {"n": 0}

    def flaky(ctx, p):
        calls["n"] += 1
        if calls["n"] == 1:
            from workers.handler import WorkFailed
            raise WorkFailed("once", retryable=True)
        return WorkResult(output={})

    retry_fan = FAN.replace("agent: {agent_id: w}",
                            "agent: {agent_id: w}\n    retry: {maximum_attempts: 3, initial_interval_ms: 100}")
    path = tmp_path / "policy.yaml"
    path.write_text("models: {cogo-local: {ratePerS: 0.5, burst: 1}}")
    fleet = Fleet(engine, {("rag", "embed"): flaky}, registry=registry_of(retry_fan),
                  settings=replace(Settings(broker_url="memory://").checked(), policy_file=path))
    run_id = submit(fleet, "fan", {"items": [1]})
    fleet.drain()
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
    assert calls["n"] == 2
    assert [r.detail["code"] for r in _audit(fleet, "execute_deferred")] == ["rate.limited"]


# -- period budgets ----------------------------------------------------------------------------------------
PRICED = FAN.replace("agent: {agent_id: w}", "agent: {agent_id: w, budget: {maxTokens: 40, maxCostUsd: 5}}")


def test_a_tenants_day_budget_holds_what_may_be_spent_prices_tokens_and_waits_for_the_next_day(engine, tmp_path):
    def lies(ctx, p):
        ctx.meter(tokens=30)  # metered tokens; the worker claims no cost: the price table decides it
        return WorkResult(output={})

    path = tmp_path / "policy.yaml"
    path.write_text("tenants: {acme: {budgetUsd: {day: 1.0}}}\nmodels: {cogo-local: {usdPer1kTokens: 10}}\n")
    fleet = Fleet(engine, {("rag", "embed"): lies}, registry=registry_of(PRICED),
                  settings=Settings(broker_url="memory://", policy_file=path).checked())
    midnight = 1800057600.0  # 2027-01-16 00:00 UTC
    fleet.clock.now = midnight - 120
    run_id = submit(fleet, "fan", {"items": [1, 2, 3, 4]})
    said: list[str] = []

    def watch(_d) -> bool:
        if fleet.clock.now < midnight:
            with engine.connect() as conn:
                summary = explain(conn, run_id)["summary"]
            if "next day" in summary:
                said.append(summary)
        return False

    fleet.drain(skip=watch)
    codes = [r.detail["code"] for r in _audit(fleet, "execute_deferred")]
    # Each asks up to 40 tokens × $0.01 = $0.40: two fit $1.00; the third waits for them (held); once both
    # settled at 30 tokens ($0.30 each, priced, though the worker claimed $0), the third fits ($0.60 + $0.40);
    # the fourth waits for them too, then would pass the day ($0.90 + $0.40) and waits for the next day.
    assert codes == ["budget.period_held", "budget.period_held", "budget.period"], codes
    assert said and "has spent $0.9000 of its $1 day budget" in said[-1] and "2027-01-16T00:00:00" in said[-1]
    enqueued = _audit(fleet, "execute_enqueued")
    assert [r.created_at >= midnight for r in enqueued] == [False, False, False, True]
    with engine.connect() as conn:
        assert run_view(conn, run_id)["status"] == "completed"
        spend = {r.period: (r.spent_usd, r.held_usd) for r in conn.execute(select(tenant_spend))}
    assert spend["day:2027-01-15"] == (pytest.approx(0.9), pytest.approx(0.0))
    assert spend["day:2027-01-16"] == (pytest.approx(0.3), pytest.approx(0.0))


def test_a_month_budget_limits_across_days_and_an_unpriced_model_counts_what_was_metered(engine, tmp_path):
    def spends(ctx, p):
        ctx.meter(tokens=5, cost_usd=0.25)
        return WorkResult(output={})

    path = tmp_path / "policy.yaml"
    path.write_text("tenants: {'*': {budgetUsd: {month: 0.6}}}\n")
    small = FAN.replace("agent: {agent_id: w}", "agent: {agent_id: w, budget: {maxTokens: 40, maxCostUsd: 0.3}}")
    fleet = Fleet(engine, {("rag", "embed"): spends}, registry=registry_of(small),
                  settings=Settings(broker_url="memory://", policy_file=path).checked())
    fleet.clock.now = 1803859200.0 - 30  # 2027-02-28 23:59:30 UTC: the third waits for March
    run_id = submit(fleet, "fan", {"items": [1, 2, 3]})
    fleet.drain(limit=5_000)
    with engine.connect() as conn:
        spend = {r.period: r.spent_usd for r in conn.execute(select(tenant_spend))}
        assert run_view(conn, run_id)["status"] == "completed"
    assert sum(v for k, v in spend.items() if k.startswith("month:")) == pytest.approx(0.75)
    assert max(spend.values()) <= 0.6 + 1e-9


def test_a_tenant_held_back_by_something_else_does_not_take_the_slots_it_cannot_use(engine, tmp_path):
    # "stuck" waits for its rate (one admission per 1,000 s), never for the route's slot; "busy" spent more
    # recently. A free slot must not be kept for stuck: busy takes it.
    fleet = _fleet(engine, tmp_path, "routes: {rag.embed: {maxConcurrent: 1}}\n"
                                     "tenants: {stuck: {ratePerS: 0.001, burst: 1}}")
    submit(fleet, "fan", {"items": list(range(10))}, tenant="busy")
    fleet.drain()
    stuck = submit(fleet, "fan", {"items": [1, 2, 3]}, tenant="stuck")
    started = fleet.clock.now
    busy = submit(fleet, "fan", {"items": [1, 2, 3]}, tenant="busy")
    fleet.drain()
    with engine.connect() as conn:
        busy_run, stuck_run = run_view(conn, busy), run_view(conn, stuck)
    assert busy_run["status"] == stuck_run["status"] == "completed"
    assert busy_run["ended_at"] - started < 5.0  # not held behind stuck's 2,000 s of rate limit
    assert stuck_run["ended_at"] - started > 1900


def test_an_assignment_that_could_never_fit_a_period_is_denied_not_kept_waiting(engine, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("tenants: {acme: {budgetUsd: {day: 0.5}}}\n")  # an unpriced model: its maxCostUsd, $5, counts
    fleet = Fleet(engine, OK, registry=registry_of(PRICED), settings=Settings(broker_url="memory://",
                                                                             policy_file=path).checked())
    run_id = submit(fleet, "fan", {"items": [1]})
    fleet.drain()
    with engine.connect() as conn:
        run = run_view(conn, run_id)
    assert run["status"] == "failed"
    denied = _audit(fleet, "budget_violation")
    assert [r.detail["code"] for r in denied] == ["budget.period_exceeded"]
    assert "more than tenant acme's whole $0.5 day budget" in denied[0].detail["message"]
