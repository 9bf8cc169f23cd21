"""The circuit breaker's state machine (``bus/circuits.py``): pure, every transition, on a clock we hand in."""

from __future__ import annotations

import pytest

from bus.circuits import CLOSED, HALF_OPEN, OPEN, Circuit, Outcome, Thresholds, apply, claim, observe, release, verdict

T = Thresholds(failures=3, failure_rate=0.5, min_calls=6, window_s=60.0, cooldown_s=30.0, cooldown_max_s=100.0)
FRESH = Circuit("codegen", "generate", "gpt-x")


def ok(i: int, at: float = 0.0) -> Outcome:
    return Outcome(f"m{i}", True, at, run_id=f"r{i}", tenant="acme")


def fail(i: int, at: float = 0.0, code: str = "work.exception") -> Outcome:
    return Outcome(f"m{i}", False, at, run_id=f"r{i}", tenant="acme", code=code)


def test_consecutive_failures_open_the_circuit_and_name_the_runs_that_failed():
    c, changes = apply(FRESH, [fail(1, 1.0), fail(2, 2.0)], T)
    assert (c.state, c.consecutive_failures, changes) == (CLOSED, 2, [])
    c, changes = apply(c, [fail(3, 3.0)], T)
    assert c.state == OPEN and c.opened_at == 3.0 and c.retry_at == 33.0 and c.open_count == 1
    assert c.reason == "3 consecutive failures"
    [change] = changes
    assert (change.before, change.circuit.state, change.message_id) == (CLOSED, OPEN, "m3")
    assert change.runs == ("r3",)  # the earlier failures were told in an earlier call
    _, [change] = apply(FRESH, [fail(1, 1.0), fail(2, 2.0), fail(3, 3.0)], T)
    assert change.runs == ("r1", "r2", "r3")
    assert change.audit()["kind"] == "circuit_open" and change.audit()["detail"]["why"] == "3 consecutive failures"
    assert [e.type for e in change.traces()] == ["dispatch.circuit.opened"] * 3


def test_a_success_resets_the_consecutive_count():
    c, changes = apply(FRESH, [fail(1), fail(2), ok(3), fail(4), fail(5)], T)
    assert (c.state, c.consecutive_failures, c.window_total, c.window_failures, changes) == (CLOSED, 2, 5, 4, [])


def test_the_failure_rate_opens_it_only_past_the_minimum_of_calls_and_the_rate():
    mixed = [fail(1), ok(2), fail(3), ok(4), fail(5)]  # 3 of 5 failed: over the rate, under min_calls
    c, changes = apply(FRESH, mixed, T)
    assert (c.state, changes) == (CLOSED, [])
    c, changes = apply(c, [ok(6)], T)  # 3 of 6: exactly the rate, not over it
    assert (c.state, changes) == (CLOSED, [])
    c, [change] = apply(c, [fail(7)], T)  # 4 of 7
    assert c.state == OPEN and c.reason == "4 of 7 attempts failed within 60 s"
    assert change.runs == ("r7",)


def test_the_window_starts_again_once_it_is_over():
    c, _ = apply(FRESH, [fail(1, 0.0), ok(2, 1.0), fail(3, 2.0), ok(4, 3.0), fail(5, 4.0)], T)
    c, changes = apply(c, [fail(6, 61.0), ok(7, 62.0)], T)  # a new window: 1 of 2
    assert (c.window_started_at, c.window_total, c.window_failures, c.state, changes) == (61.0, 2, 1, CLOSED, [])


def test_no_verdict_changes_nothing_and_outcomes_while_open_are_ignored():
    neutral = Outcome("m9", None, 1.0, code="budget.exceeded")
    assert observe(FRESH, neutral, T) == (FRESH, None)
    c, _ = apply(FRESH, [fail(1), fail(2), fail(3)], T)
    assert apply(c, [ok(4, 5.0), fail(5, 6.0)], T) == (c, [])  # stragglers admitted before it opened


def test_a_probe_is_claimed_only_once_the_cool_down_is_over():
    c, _ = apply(FRESH, [fail(1), fail(2), fail(3)], T)
    assert claim(c, "p1", 29.9) is None
    probing, change = claim(c, "p1", 30.0, tenant="acme", run_id="rp")
    assert (probing.state, probing.probe_id, change.before, change.runs) == (HALF_OPEN, "p1", OPEN, ("rp",))
    assert change.audit()["kind"] == "circuit_half_open"
    assert claim(probing, "p2", 31.0) is None  # one probe at a time


def test_a_successful_probe_closes_it_and_forgets_its_history():
    c, _ = apply(FRESH, [fail(1), fail(2), fail(3)], T)
    probing, _ = claim(c, "p1", 30.0)
    closed, [change] = apply(probing, [ok(8, 31.0), Outcome("p1", True, 32.0, "rp", "acme")], T)
    assert closed.state == CLOSED and change.before == HALF_OPEN and change.runs == ("rp",)
    assert (closed.consecutive_failures, closed.open_count, closed.retry_at, closed.probe_id, closed.reason) == \
        (0, 0, None, None, None)
    assert change.audit()["kind"] == "circuit_closed"


def test_a_failing_probe_reopens_it_with_a_doubled_cool_down_up_to_the_ceiling():
    c, _ = apply(FRESH, [fail(1, 0.0), fail(2, 0.0), fail(3, 0.0)], T)
    cooldowns = []
    now = 0.0
    for _ in range(4):
        cooldowns.append(c.retry_at - c.opened_at)
        now = c.retry_at
        c, _ = claim(c, f"p{now}", now)
        c, [change] = apply(c, [Outcome(f"p{now}", False, now + 1, code="ttl.expired")], T)
        assert change.before == HALF_OPEN and c.state == OPEN
        assert c.reason == f"its probe p{now} failed (ttl.expired)"
    assert cooldowns == [30.0, 60.0, 100.0, 100.0]
    assert c.open_count == 5


def test_a_probe_with_no_verdict_hands_the_circuit_back_open_and_due():
    c, _ = apply(FRESH, [fail(1), fail(2), fail(3)], T)
    probing, _ = claim(c, "p1", 30.0)
    back, [change] = apply(probing, [Outcome("p1", None, 31.0, code="execute.abandoned")], T)
    assert (back.state, back.retry_at, back.open_count, back.probe_id) == (OPEN, 30.0, 1, None)
    assert change.before == HALF_OPEN and change.audit()["kind"] == "circuit_open"
    assert release(back, 40.0, "x") == (back, None)  # only a half-open circuit is released
    again, change = release(probing, 40.0, "its probe p1 was not run")
    assert (again.state, again.retry_at, change.why) == (OPEN, 30.0, "its probe p1 was not run")


@pytest.mark.parametrize(("kind", "code", "said"), [
    ("execute_done", "", (True, "")),
    ("execute_failed", "work.exception", (False, "work.exception")),
    ("ttl_expired", "ttl.expired", (False, "ttl.expired")),
    ("execute_failed", "ttl.expired", None),  # the final TTL failure's second row: told by ttl_expired
    ("lease_expired", "lease.expired", (False, "lease.expired")),
    ("lease_expired", "execute.abandoned", (None, "execute.abandoned")),
    ("execute_failed", "budget.exceeded", (None, "budget.exceeded")),
    ("execute_failed", "work.unroutable", (None, "work.unroutable")),
    ("budget_violation", "budget.exceeded", None),
    ("policy_denied", "models.not_allowed", None),
    ("execute_retry", "", None),
])
def test_which_audit_rows_say_something_of_the_worker(kind, code, said):
    assert verdict(kind, {"code": code}) == said


def test_the_thresholds_come_from_the_settings():
    from bus.settings import Settings

    t = Thresholds.of(Settings.from_env({"COGO_CIRCUIT_FAILURES": "7", "COGO_CIRCUIT_COOLDOWN_S": "2"}))
    assert (t.failures, t.failure_rate, t.min_calls, t.window_s, t.cooldown_s, t.cooldown_max_s) == \
        (7, 0.5, 20, 60.0, 2.0, 600.0)
    assert [t.cooldown(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_cogo_status_shows_the_circuits_that_are_not_closed_in_words():
    from ecosystem.ops_cli import _circuits

    shown = [{"service": "t", "role": "call", "model": "gpt-x", "state": "open", "reason": "5 consecutive failures",
              "opened_at": 100.0, "retry_at": 130.0},
             {"service": "t", "role": "call", "model": "gpt-y", "state": "half_open", "probe_id": "p1"},
             {"service": "t", "role": "call", "model": "gpt-z", "state": "closed"}]
    text = _circuits(shown, now=110.0).plain
    assert text.splitlines() == [
        "circuits 1 closed",
        "  t.call / model gpt-x: open since 10 s ago after 5 consecutive failures; next probe in 20 s",
        "  t.call / model gpt-y: half-open, probe p1 running",
    ]
