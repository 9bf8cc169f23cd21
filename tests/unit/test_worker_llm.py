"""The local model and the pieces of the model client that need no network."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

from bus.envelope import Assignment
from ecosystem.processes import PROCESSES
from workers.handler import WorkContext
from workers.llm import (
    LOCAL_MODEL,
    UNKNOWN_MODEL_PRICE,
    FunctionSpec,
    LocalModel,
    OpenAIChatClient,
    model_for,
    parse_files,
    parse_spec,
    price_usd,
    render_files,
    write_program,
)


def context(tmp_path: Path, *, model: str = LOCAL_MODEL, llm_url: str = "") -> WorkContext:
    return WorkContext(task_id="t1", run_id=None, token_id=None, node_id=None, tenant="acme", attempt=1,
                       assignment=Assignment(agent_id="codegen", model=model), deadline=time.time() + 60,
                       artifacts_root=tmp_path, llm_url=llm_url, llm_api_key="sk-test")


@pytest.mark.parametrize(("spec", "expected"), [
    ("a function add(a, b) that returns a + b", [FunctionSpec("add", ("a", "b"), "a + b")]),
    ("a function area(w, h) that returns the product of w and h.", [FunctionSpec("area", ("w", "h"), "w * h")]),
    ("sq(x) returns the square of x; neg(y) returns -y",
     [FunctionSpec("sq", ("x",), "x ** 2"), FunctionSpec("neg", ("y",), "-y")]),
    ("a function add(a, b) that returns a + b, and a function mul(a, b) that returns a * b",
     [FunctionSpec("add", ("a", "b"), "a + b"), FunctionSpec("mul", ("a", "b"), "a * b")]),
    ("big(n) returns max(n, 10) if n > 0 else abs(n)",
     [FunctionSpec("big", ("n",), "max(n, 10) if n > 0 else abs(n)")]),
])
def test_the_local_model_reads_name_parameters_and_expression(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", [
    "sort the list",  # no signature at all
    "greet(name) returns a friendly greeting",  # prose, not an expression
    "evil(x) returns __import__('os').system('true')",  # not in the safe subset
    "boom(x) returns 10 ** 10 ** 10",  # would eat the worker
    "f(a=1) returns a",  # defaults are not supported
])
def test_what_the_local_model_cannot_read_falls_back_to_the_generic_template(spec):
    fns = parse_spec(spec)
    assert len(fns) == 1 and fns[0].expr is None
    module, tests = write_program(spec).values()
    assert "generic template" in module and "assert" in tests


def test_the_local_model_is_deterministic_and_names_files_after_the_function():
    spec = "a function add(a, b) that returns a + b"
    files = write_program(spec)
    assert files == write_program(spec)
    assert list(files) == ["add.py", "test_add.py"]
    assert "def add(a, b):\n" in files["add.py"] and "return a + b" in files["add.py"]
    assert "assert add(2, 3) == 5" in files["test_add.py"]


def test_a_function_named_like_a_stdlib_module_does_not_shadow_it():
    assert list(write_program("copy(x) returns x")) == ["copy_impl.py", "test_copy_impl.py"]


def test_local_model_answers_in_file_blocks_and_reports_word_token_usage():
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "<spec>\nhalf(x) returns x / 2\n</spec>\nmore words here"}]
    completion = LocalModel().complete(messages, model="whatever")
    files = parse_files(completion.content)
    assert list(files) == ["half.py", "test_half.py"]
    assert completion.model == LOCAL_MODEL and completion.cost_usd == 0.0
    assert completion.prompt_tokens == len("be brief".split()) + len(messages[1]["content"].split())
    assert completion.completion_tokens == len(completion.content.split())
    assert completion.total_tokens == completion.prompt_tokens + completion.completion_tokens


def test_file_blocks_round_trip_and_tolerate_markdown_decoration():
    files = {"pkg/a.py": "x = 1\n", "test_a.py": "def test_a():\n    assert True\n"}
    assert parse_files(render_files(files)) == files
    assert parse_files("Here you go:\n**FILE: `b.py`**\n```py\nprint(1)\n```\nbye") == {"b.py": "print(1)\n"}
    assert parse_files("no files here") == {}


def test_price_is_per_thousand_tokens_with_dated_variants_and_a_high_default():
    assert price_usd("gpt-4o-mini", 1000, 1000) == pytest.approx(0.00015 + 0.0006)
    assert price_usd("gpt-4o-mini-2024-07-18", 2000, 0) == pytest.approx(0.0003)
    assert price_usd("gpt-4o", 1000, 0) == pytest.approx(0.0025)  # not confused with gpt-4o-mini
    assert price_usd("some-new-model", 1000, 1000) == pytest.approx(sum(UNKNOWN_MODEL_PRICE))
    assert price_usd(LOCAL_MODEL, 10**6, 10**6) == 0.0


def test_the_client_does_not_double_v1_in_the_endpoint():
    assert OpenAIChatClient("http://h:1", "k").endpoint == "http://h:1/v1/chat/completions"
    assert OpenAIChatClient("http://h:1/v1/", "k").endpoint == "http://h:1/v1/chat/completions"


def test_model_for_picks_the_local_model_without_an_endpoint_or_when_asked(tmp_path):
    assert isinstance(model_for(context(tmp_path)), LocalModel)
    assert isinstance(model_for(context(tmp_path, model="gpt-4o-mini")), LocalModel)
    assert isinstance(model_for(context(tmp_path, llm_url="http://127.0.0.1:9")), LocalModel)
    client = model_for(context(tmp_path, model="gpt-4o-mini", llm_url="http://127.0.0.1:9"))
    assert isinstance(client, OpenAIChatClient) and client.api_key == "sk-test"


@pytest.mark.parametrize("process", [p for p in PROCESSES if p.entry.startswith("workers.")
                                     and p.kind == "celery"], ids=lambda p: p.name)
def test_every_worker_module_serves_exactly_the_routes_of_its_process(process):
    module = importlib.import_module(process.entry.split(":")[0])
    assert set(module.HANDLERS) == set(process.routes)
    assert callable(module.main)
