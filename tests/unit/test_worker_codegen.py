"""The codegen handler with the local model, and its round trip through build-test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bus.envelope import Assignment, Budget
from bus.errors import BudgetExceeded, TTLExpired, WorkFailed
from workers.build_test import build_test
from workers.codegen import build_messages, generate
from workers.handler import WorkContext


def context(tmp_path: Path, assignment_id: str, *, max_tokens: int = 100_000, ttl_s: float = 60) -> WorkContext:
    assignment = Assignment(agent_id="codegen", budget=Budget(maxTokens=max_tokens))
    return WorkContext(assignment_id=assignment_id,
                       run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                       assignment=assignment, deadline=time.time() + ttl_s, artifacts_root=tmp_path)


def test_codegen_writes_edits_json_and_meters_its_tokens(tmp_path):
    ctx = context(tmp_path, "gen-1")
    result = generate(ctx, {"spec": "a function add(a, b) that returns a + b"})
    path = tmp_path / "gen-1" / "edits.json"
    assert result.output["edits_path"] == str(path.resolve())
    assert result.result_url == path.resolve().as_uri()
    assert result.output["files"] == ["add.py", "test_add.py"]
    assert result.output["model"] == "cogo-local"
    written = json.loads(path.read_text())
    assert [(e["path"], e["action"]) for e in written["edits"]] == [("add.py", "create"), ("test_add.py", "create")]
    assert written["spec"] == "a function add(a, b) that returns a + b"
    assert ctx.usage.tokens == written["usage"]["tokens"] > 0
    assert ctx.usage.cost_usd == 0.0


@pytest.mark.parametrize("spec", [
    "a function add(a, b) that returns a + b",
    "a function hyp(a, b) that returns (a ** 2 + b ** 2) ** 0.5; a function sign(x) returns 1 if x > 0 else -1",
    "summarise the quarterly report",  # the generic template must pass its own tests too
])
def test_generated_code_really_passes_build_test(tmp_path, spec):
    generated = generate(context(tmp_path, "gen"), {"spec": spec})
    result = build_test(context(tmp_path, "bt"), {"edits_path": generated.output["edits_path"]})
    assert result.output["build_ok"] is True
    assert result.output["passed"] >= 1 and result.output["failed"] == 0
    assert result.output["success_rate"] == 1.0
    assert result.output["feedback"] == ""


def test_an_existing_file_is_replaced_not_created(tmp_path):
    result = generate(context(tmp_path, "gen"), {"spec": "add(a, b) returns a + b",
                                                 "files": {"add.py": "def add(a, b):\n    return a - b\n"}})
    edits = json.loads(Path(result.output["edits_path"]).read_text())["edits"]
    assert {e["path"]: e["action"] for e in edits} == {"add.py": "replace", "test_add.py": "create"}


def test_the_prompt_carries_spec_files_and_feedback():
    messages = build_messages("add(a, b) returns a + b", {"add.py": "x = 1\n"}, "1 failed: assert 4 == 5")
    user = messages[-1]["content"]
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert "<spec>\nadd(a, b) returns a + b\n</spec>" in user
    assert "FILE: add.py\n```python\nx = 1\n" in user
    assert "assert 4 == 5" in user


def test_structured_feedback_is_accepted(tmp_path):
    result = generate(context(tmp_path, "gen"), {"spec": "add(a, b) returns a + b",
                                                 "feedback": {"failed": 1, "summary": "1 failed"}})
    assert result.output["files"] == ["add.py", "test_add.py"]


def test_a_tiny_token_budget_raises_budget_exceeded(tmp_path):
    with pytest.raises(BudgetExceeded) as raised:
        generate(context(tmp_path, "gen", max_tokens=10), {"spec": "add(a, b) returns a + b"})
    assert raised.value.details["limit"] == "maxTokens"


def test_a_past_deadline_raises_ttl_expired_before_any_work(tmp_path):
    ctx = context(tmp_path, "gen", ttl_s=-1)
    with pytest.raises(TTLExpired):
        generate(ctx, {"spec": "add(a, b) returns a + b"})
    assert ctx.usage.tokens == 0


@pytest.mark.parametrize(("input", "code"), [
    ({}, "input.invalid"),
    ({"spec": "   "}, "input.invalid"),
    ({"spec": "add(a, b) returns a + b", "files": ["add.py"]}, "input.invalid"),
    ({"spec": "add(a, b) returns a + b", "files": {"../add.py": ""}}, "edits.unsafe"),
])
def test_bad_input_is_a_permanent_failure(tmp_path, input, code):
    with pytest.raises(WorkFailed) as raised:
        generate(context(tmp_path, "gen"), input)
    assert raised.value.code == code and raised.value.retryable is False


def test_the_issue_8_injection_through_codegen_yields_a_harmless_module_that_passes(tmp_path):
    marker = tmp_path / "pwned"
    spec = f'f(x) returns x # """ or open({str(marker)!r}, "w").write("owned") or """'
    generated = generate(context(tmp_path, "gen"), {"spec": spec})
    edits = json.loads(Path(generated.output["edits_path"]).read_text())["edits"]
    module = next(e["content"] for e in edits if e["path"] == "f.py")
    assert "def f(x):" in module and "return x\n" in module
    result = build_test(context(tmp_path, "bt"), {"edits_path": generated.output["edits_path"]})
    assert (result.output["passed"], result.output["success_rate"]) == (1, 1.0)
    assert not marker.exists()
