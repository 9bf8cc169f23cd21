"""``sql.*`` introspection events (seed 000): off by default; when asked, the brain's steps and the dispatcher's
admissions record each statement (kind, table, rows, duration) as events of the run."""

from __future__ import annotations

from bus import introspection
from bus.sql_trace import statement_of
from tests.support.harness import Fleet, submit
from workers.handler import WorkResult


def run_embed(engine, *, sql_events: bool) -> str:
    fleet = Fleet(engine, {("rag", "embed"): lambda ctx, p: WorkResult(output={})})
    fleet.brain.sql_events = fleet.dispatcher.sql_events = sql_events
    run_id = submit(fleet, "embed")
    fleet.drain()
    return run_id


def test_no_sql_events_unless_asked(engine):
    run_id = run_embed(engine, sql_events=False)
    with engine.connect() as conn:
        assert introspection.read(conn, run_id, category="sql") == []


def test_each_statement_of_a_step_is_an_event_with_its_table_rows_and_duration(engine):
    run_id = run_embed(engine, sql_events=True)
    with engine.connect() as conn:
        found = introspection.read(conn, run_id, category="sql")
    seen = {(e["type"], e["data"]["table"]) for e in found}
    # Loading the state, the run's versioned update, the outbox rows, the admission's move of the assignment.
    assert {("sql.select", "runs"), ("sql.update", "runs"), ("sql.insert", "agent_messages"),
            ("sql.update", "agent_messages")} <= seen
    [versioned] = [e for e in found if e["type"] == "sql.update" and e["data"]["table"] == "runs"][:1]
    assert versioned["data"]["rows"] == 1 and versioned["data"]["ms"] >= 0
    assert all(e["category"] == "sql" for e in found)


def test_a_statement_is_read_for_its_kind_and_first_table():
    assert statement_of('SELECT runs.id FROM runs WHERE runs.id = ?') == ("select", "runs")
    assert statement_of("SELECT runs.id, EXISTS (SELECT * FROM run_visits WHERE run_visits.run_id = runs.id) AS b "
                        "FROM runs WHERE runs.id = ?") == ("select", "runs")
    assert statement_of('INSERT INTO "agent_messages" (id) VALUES (?)') == ("insert", "agent_messages")
    assert statement_of("UPDATE tokens SET status=? WHERE id=?") == ("update", "tokens")
    assert statement_of("DELETE FROM fan_ins WHERE run_id=?") == ("delete", "fan_ins")
    assert statement_of("BEGIN IMMEDIATE") == ("other", None)
