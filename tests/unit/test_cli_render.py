"""The operator's views in words: a run's position, spend against budget, explain items, the fleet table."""

from __future__ import annotations

from rich.console import Console

from ecosystem import render
from ecosystem.processes import PROCESSES

NOW = 1_800_000_000.0


def text_of(renderable) -> str:
    console = Console(width=240, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_position_names_the_step_and_attempt_and_puts_a_waiting_person_first():
    task = {"kind": "task", "node_id": "build-test", "attempt": 2, "max_attempts": 3, "assignment_status": "running"}
    assert render.position({"waiting_for": [task]}) == "step build-test, attempt 2 of 3 (running)"
    approval = {"kind": "approval", "node_id": "approve", "approval_id": "a-1", "approval_status": "pending"}
    assert render.position({"waiting_for": [task, approval]}) == "step approve waits for a person (approval a-1)"
    join = {"kind": "join", "join": "merge", "missing": [{"branch_index": 1, "waiting_for": [
        {**task, "node_id": "work", "attempt": 1, "assignment_status": "retry_wait"}]}]}
    assert render.position({"waiting_for": [join]}) == "step work, attempt 1 of 3 (backing off before a retry)"
    assert render.position({"status": "pending", "waiting_for": []}) == "pending"


def test_spend_against_budget():
    run = {"spent_tokens": 1840, "spent_cost_usd": 0.0123, "budget": {"maxTokens": 2000, "maxCostUsd": 1.0}}
    assert render.spend(run) == "1,840 / 2,000 tokens · $0.0123 / $1.0000"
    assert render.spend({"spent_tokens": 12, "spent_cost_usd": 0.0, "budget": None}) == \
        "12 tokens · $0.0000 (no budget)"


def test_explain_items_read_in_words_with_relative_times():
    approval = {"kind": "approval", "node_id": "approve", "approval_id": "a-1", "approval_status": "pending",
                "prompt": "Ship it?", "requested_at": NOW - 120, "expires_at": NOW + 3600, "since": NOW - 120}
    said = render.describe(approval, now=NOW, hint_suffix=" --api http://h:1")
    assert said == ("approve: waits for a person ('Ship it?'): approval a-1 pending since 2 min ago, answer due "
                    "in 1 h — approve with `cogo approve a-1 --api http://h:1`")
    retry = {"kind": "task", "node_id": "work", "attempt": 1, "max_attempts": 3, "route": "t.work",
             "assignment_status": "retry_wait", "last_error": "busy", "retry_at": NOW + 5, "since": NOW - 1}
    assert render.describe(retry, now=NOW) == "work: attempt 1 of 3 on t.work failed (busy); next attempt in 5 s"
    timer = {"kind": "timer", "node_id": "pause", "fire_at": NOW + 30}
    assert render.describe(timer, now=NOW) == "pause: waits for a timer that fires in 30 s"


def test_runs_table_is_newest_first_with_relative_times_and_durations():
    runs = [{"id": "old", "intent": "echo", "tenant": "t", "status": "completed", "created_at": NOW - 600,
             "ended_at": NOW - 587.6},
            {"id": "new", "intent": "upgrade", "tenant": "t", "status": "waiting", "created_at": NOW - 185,
             "ended_at": None}]
    text = text_of(render.runs_table(runs, now=NOW))
    assert text.index("new") < text.index("old")
    assert "10 min ago" in text and "12.4 s" in text
    assert "3 min ago" in text and "3 min 5 s so far" in text


def test_fleet_status_says_how_it_knows_each_process_state():
    brain = next(p for p in PROCESSES if p.name == "cogo-orchestrator-brain")
    worker = next(p for p in PROCESSES if p.name == "cogo-build-test-worker")
    codegen = next(p for p in PROCESSES if p.name == "cogo-codegen-service")
    reclaimer = next(p for p in PROCESSES if p.name == "cogo-bus-reclaimer")
    metrics = next(p for p in PROCESSES if p.name == "cogo-metrics-server")
    fleet = {"checked_at": NOW, "shards": 1, "api": {"state": "up", "pid": 1, "hostname": "h"},
             "broker": {"reachable": True}, "consumer_source": "replies",
             "consumers": [{"name": "cogo-orchestrator-brain", "hostname": "cogo-orchestrator-brain@h.7"}],
             "http": {"metrics_port": {"state": "unknown", "detail": "no answer at http://127.0.0.1:9"}},
             "queues": [{"queue": "code.build-test.0", "broker_depth": 0, "waiting": 0, "running": 1},
                        {"queue": "orchestrator.decide.0", "broker_depth": 3, "waiting": 2,
                         "by_status": {"queued": 2}, "oldest_created_at": NOW - 90, "running": 0}]}
    assert render.process_state(brain, fleet)[0] == "up"
    assert render.process_state(worker, fleet)[0] == "busy"
    assert render.process_state(codegen, fleet)[0] == "down"
    assert render.process_state(reclaimer, fleet)[0] == "unknown"
    assert render.process_state(metrics, fleet) == ("unknown", "no answer at http://127.0.0.1:9")
    assert render.process_state(codegen, {**fleet, "broker": {"reachable": False}})[0] == "unknown"
    text = text_of(render.fleet_status(fleet, PROCESSES, now=NOW))
    for process in PROCESSES:
        assert process.name in text
    assert "orchestrator.decide.0" in text and "1 min ago" in text and "queued 2" in text


def test_schema_fields_in_one_line():
    schema = {"type": "object", "required": ["spec"], "properties": {
        "spec": {"type": "string"}, "documents": {"type": "array", "items": {"type": "object"}}}}
    assert render.schema_fields(schema) == "spec: string*, documents: array of object"
    assert render.schema_fields({"type": "object"}) == "any JSON object"
    assert render.schema_fields(None) == "-"
