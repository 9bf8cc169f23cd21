"""Golden histories (``tests/golden/*.json``): recorded events replayed through the planner must still
produce the recorded decisions and the recorded introspection events, whole (data included). A built-in
flow is read from its YAML on disk and a test flow from its YAML text, so a change to either, or to a default
the parser fills in, shows up here. Re-record with ``python -m tests.golden.record`` only when the change
is intended, and review the diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coordinator import events as ev
from coordinator.definitions import BUILTIN_DIR, load_yaml, parse_definition
from coordinator.planning import plan
from coordinator.replay import as_json, event_json
from coordinator.state import RunInfo, WorkflowState

GOLDEN = sorted((Path(__file__).parent.parent / "golden").glob("*.json"))


def initial(doc: dict) -> WorkflowState:
    run = doc["run"]
    info = RunInfo(id=run["id"], tenant=run["tenant"], intent=run["intent"], workflow=run["workflow"],
                   workflow_version=run["workflow_version"], status="pending", input=run["input"],
                   parent_run_id=run["parent_run_id"], parent_token_id=run["parent_token_id"],
                   root_run_id=run["root_run_id"], depth=run["depth"], budget=run["budget"])
    if "definition_file" in doc:
        definition = load_yaml(BUILTIN_DIR / doc["definition_file"])
    else:
        definition = parse_definition(yaml.safe_load(doc["definition_yaml"]))
    return WorkflowState(run=info, definition=definition,
                         catalog={k: tuple(v) for k, v in doc["catalog"].items()})


def test_there_are_golden_histories():
    assert len(GOLDEN) >= 12


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_history_replays_to_the_same_decisions(path):
    doc = json.loads(path.read_text())
    state = initial(doc)
    for index, step in enumerate(doc["steps"]):
        raw = step["event"]
        event = ev.from_row(id=raw["id"], run_id=doc["run"]["id"], kind=raw["kind"], payload=raw["payload"])
        planned = plan(state, event, now=step["now"])
        got = [as_json(x.describe()) for x in planned.decisions]
        assert got == step["decisions"], f"{path.name}: event {index} ({raw['kind']}) now decides differently"
        trace = [event_json(e) for e in planned.events]
        assert trace == step["events"], f"{path.name}: event {index} ({raw['kind']}) now traces differently"
        state = planned.next_state
    assert state.run.status == doc["status"]
