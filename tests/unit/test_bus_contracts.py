"""Routing, the envelope contract, settings, the ledger's state machine and backoff: pure, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus import ledger
from bus.envelope import Assignment, AssignmentEnvelope, Intent, Usage, parse_model
from bus.errors import ConfigError, ContractError
from bus.outbox import destination
from bus.retry import RetryPolicy, compute_backoff
from bus.routing import Route, decide_queue, execute_queue, shard_for, stable_hash
from bus.settings import Settings


class TestRouting:
    def test_queue_is_service_role_shard(self):
        assert Route("codegen", "generate", 3, "acme").queue == "codegen.generate.3"

    def test_shard_is_the_same_in_another_process_with_another_hash_seed(self):
        import subprocess
        import sys
        ids = [f"run-{i}" for i in range(50)]
        code = f"from bus.routing import shard_for; print([shard_for(i, 8) for i in {ids!r}])"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=Path(__file__).parents[2])
        assert other.stdout.strip() == str([shard_for(i, 8) for i in ids])
        assert stable_hash("abc") == 891568578  # crc32, not Python's salted hash()

    def test_shards_spread(self):
        assert len({shard_for(f"run-{i}", 8) for i in range(1000)}) == 8

    def test_a_shards_brain_and_dispatcher_queues(self):
        assert (decide_queue(3), execute_queue(3)) == ("orchestrator.decide.3", "orchestrator.execute.3")

    @pytest.mark.parametrize("kwargs, field", [
        ({"service": "Codegen", "role": "x"}, "service"),
        ({"service": "a.b", "role": "x"}, "service"),
        ({"service": "a", "role": ""}, "role"),
    ])
    def test_bad_route_names_the_field(self, kwargs, field):
        with pytest.raises(ContractError) as err:
            Route(**kwargs)
        assert err.value.details["field"] == field

    def test_bad_shard_and_tenant(self):
        with pytest.raises(ContractError, match="shard"):
            Route("a", "b", -1)
        with pytest.raises(ContractError, match="tenant"):
            Route("a", "b", 0, "")


class TestEnvelope:
    def test_assignment_uses_the_users_wire_names(self):
        wire = Assignment(agent_id="codegen", budget={"maxCostUsd": 0.5, "maxTokens": 10}).wire()
        assert wire == {"agent_id": "codegen", "version": "1", "model": "cogo-local",
                        "budget": {"maxCostUsd": 0.5, "maxTokens": 10}, "ttl_ms": 60000}

    def test_parse_round_trip(self):
        a = Assignment(agent_id="x", ttl_ms=5)
        assert AssignmentEnvelope.of({"__assignment": a.wire()}).contract() == a

    @pytest.mark.parametrize("raw, field", [
        ({"agent_id": ""}, "__assignment.agent_id"),
        ({"agent_id": "a", "ttl_ms": 0}, "__assignment.ttl_ms"),
        ({"agent_id": "a", "budget": {"maxCostUsd": -1}}, "__assignment.budget.maxCostUsd"),
        ({"agent_id": "a", "budget": {"maxTokens": "many"}}, "__assignment.budget.maxTokens"),
        ({"agent_id": "a", "colour": "red"}, "__assignment.colour"),
    ])
    def test_bad_assignment_names_the_field(self, raw, field):
        with pytest.raises(ContractError) as err:
            AssignmentEnvelope.of({"__assignment": raw}).contract()
        assert err.value.details["field"] == field
        assert err.value.code == "contract.invalid"

    def test_the_envelope_round_trips_and_reads_a_hostile_payload_as_empty(self):
        from bus.envelope import TokenRef
        sent = AssignmentEnvelope({"agent_id": "a"}, TokenRef("t.1", "t", "parent"), {"maximum_attempts": 3},
                                  {"x": 1})
        assert AssignmentEnvelope.of(sent.wire()) == sent
        assert sent.retry_policy(1).maximum_attempts == 3
        hostile = AssignmentEnvelope.of({"__assignment": "root", "__token": ["t"], "__retry": 7, "input": None})
        assert (hostile.assignment, hostile.token, hostile.retry) == ({}, TokenRef(), None)
        assert hostile.retry_policy(2).maximum_attempts == 2
        with pytest.raises(ContractError, match="__assignment"):
            hostile.contract()

    def test_missing_assignment(self):
        with pytest.raises(ContractError, match="__assignment"):
            AssignmentEnvelope.of({"input": {}}).contract()

    def test_intent_rejects_bad_tenant(self):
        with pytest.raises(ContractError, match="intent.tenant"):
            parse_model(Intent, {"tenant": "has space", "intent": "x"}, where="intent")

    def test_usage_against_budget(self):
        budget = Assignment(agent_id="a", budget={"maxCostUsd": 0.01, "maxTokens": 100}).budget
        assert Usage(tokens=100, cost_usd=0.01).exceeds(budget) is None
        assert Usage(tokens=101).exceeds(budget) == "maxTokens"
        assert (Usage(cost_usd=0.006) + Usage(cost_usd=0.006)).exceeds(budget) == "maxCostUsd"


class TestSettings:
    def test_defaults_fill_in_the_embedded_ledger(self, tmp_path):
        s = Settings.from_env({"COGO_HOME": str(tmp_path)})
        assert s.database_url == f"sqlite:///{tmp_path.resolve()}/cogo.db"
        assert s.artifacts_dir == Path(tmp_path) / "artifacts"
        assert s.shards == 1

    @pytest.mark.parametrize("env, var", [
        ({"COGO_SHARDS": "two"}, "COGO_SHARDS"),
        ({"COGO_SHARDS": "0"}, "COGO_SHARDS"),
        ({"COGO_SHARDS": "2", "COGO_SHARD": "2"}, "COGO_SHARD"),
        ({"COGO_SHARD": "-2"}, "COGO_SHARD"),
        ({"COGO_LEASE_S": "-1"}, "COGO_LEASE_S"),
        ({"COGO_BROKER_URL": "kafka://x"}, "COGO_BROKER_URL"),
        ({"COGO_DATABASE_URL": "mysql://x"}, "COGO_DATABASE_URL"),
        ({"COGO_TASK_EVENTS": "maybe"}, "COGO_TASK_EVENTS"),
    ])
    def test_bad_value_names_the_variable(self, env, var):
        with pytest.raises(ConfigError, match=var):
            Settings.from_env(env)

    def test_round_trip_through_the_environment(self, tmp_path):
        s = Settings.from_env({"COGO_HOME": str(tmp_path), "COGO_SHARDS": "3", "COGO_TASK_EVENTS": "true"})
        assert Settings.from_env(s.to_env()) == s


class TestStateMachine:
    def test_assignment_path(self):
        path = [ledger.QUEUED, ledger.DISPATCHED, ledger.RUNNING, ledger.RETRY_WAIT, ledger.DISPATCHED,
                ledger.RUNNING, ledger.DONE, ledger.SETTLED]
        assert all(ledger.can_move(a, b) for a, b in zip(path, path[1:], strict=False))

    @pytest.mark.parametrize("a, b", [
        (ledger.DONE, ledger.RUNNING), (ledger.SETTLED, ledger.QUEUED), (ledger.QUEUED, ledger.RUNNING),
        (ledger.FAILED, ledger.DONE), (ledger.DEAD, ledger.DISPATCHED)])
    def test_no_way_back(self, a, b):
        assert not ledger.can_move(a, b)

    def test_finished_rows_only_settle_but_a_dead_letter_may_be_requeued(self):
        for final in ledger.FINAL:
            assert ledger.TRANSITIONS[final] == ({ledger.SETTLED, ledger.QUEUED} if final == ledger.DEAD
                                                 else {ledger.SETTLED})

    def test_destination_follows_status_on_the_rows_own_shard(self):
        route = Route("codegen", "generate", 2, "t")
        assert destination(route=route, status=ledger.QUEUED) == ("cogo.execute", "orchestrator.execute.2")
        assert destination(route=route, status=ledger.DISPATCHED) == ("cogo.work", "codegen.generate.2")
        assert destination(route=Route("orchestrator", "decide", 2, "t"), status=ledger.QUEUED) == \
            ("cogo.decide", "orchestrator.decide.2")


class TestBackoff:
    def test_exponential_and_capped(self):
        policy = RetryPolicy(initial_interval_ms=100, backoff_coefficient=2, maximum_interval_ms=500, jitter=0)
        assert [compute_backoff(n, policy, lambda: 0.0) for n in range(1, 6)] == [100, 200, 400, 500, 500]

    def test_jitter_is_bounded_and_deterministic_with_a_given_rng(self):
        policy = RetryPolicy(initial_interval_ms=1000, jitter=0.1)
        assert compute_backoff(1, policy, lambda: 0.0) == 900
        assert compute_backoff(1, policy, lambda: 1.0) == 1100
        assert compute_backoff(1, policy, lambda: 0.5) == 1000

    def test_bad_policy(self):
        with pytest.raises(ValueError, match="maximum_interval_ms"):
            RetryPolicy(initial_interval_ms=10, maximum_interval_ms=5)
