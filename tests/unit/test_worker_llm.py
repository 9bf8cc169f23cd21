"""The local model and the pieces of the model client that need no network."""

from __future__ import annotations

import ast
import importlib
import keyword
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.envelope import Assignment
from ecosystem.processes import PROCESSES
from workers import llm as llm_module
from workers.handler import WorkContext
from workers.llm import (
    LOCAL_MODEL,
    UNKNOWN_MODEL_PRICE,
    FunctionSpec,
    LocalModel,
    OpenAIChatClient,
    model_for,
    module_name,
    parse_files,
    parse_spec,
    price_usd,
    render_files,
    write_program,
)


def context(tmp_path: Path, *, model: str = LOCAL_MODEL, llm_url: str = "") -> WorkContext:
    return WorkContext(assignment_id="t1", run_id=None, token_id=None, node_id=None, tenant="acme", attempt=1,
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


@pytest.mark.parametrize("module", ["workers.codegen", "workers.build_test", "workers.rag_embed", "workers.kg_build"])
def test_every_worker_module_serves_exactly_the_routes_of_its_process(module):
    """The process table takes each worker's route from the worker itself: a queue name is written once."""
    worker = importlib.import_module(module)
    [process] = [p for p in PROCESSES if worker.ROUTE in p.routes]
    assert set(worker.HANDLERS) == set(process.routes) == {worker.ROUTE}
    assert process.entry.startswith("ecosystem.entrypoints:")


# ---------------------------------------------------------------- the local model cannot be injected

INJECTIONS = [
    # Issue 8: a comment carrying """ closed the docstring the expression was pasted into.
    'f(x) returns x # """ or __import__("os").system("touch /tmp/cogo-pwned") or """',
    "f(x) returns x # ''' or __import__('os').system('id') or '''",
    'f(x) returns x # """\nimport os\nos.system("id")\n"""',
    'f(x) returns x + 1 # \\',
    'evil(x) returns x"""; import os; """',
    'g(a, b) returns a # """ + b',
]


@pytest.mark.parametrize("spec", INJECTIONS)
def test_a_spec_cannot_inject_code_into_the_local_models_program(spec):
    for source in write_program(spec).values():
        assert_only_intended_nodes(source)
        code = _code_outside_strings(source)
        assert "__import__" not in code and "os.system" not in code and "import os" not in code


def test_the_injection_of_issue_8_yields_the_plain_function_and_its_passing_tests(tmp_path):
    files = write_program(INJECTIONS[0])
    assert list(files) == ["f.py", "test_f.py"]
    namespace: dict = {}
    exec(compile(files["f.py"], "f.py", "exec"), namespace)  # the generated module is safe to import
    assert namespace["f"](7) == 7 and not Path("/tmp/cogo-pwned").exists()


_MODULE_NODES = (ast.Module, ast.Expr, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Tuple,
                 *llm_module._ALLOWED)
_TEST_NODES = (ast.Module, ast.Expr, ast.Constant, ast.Import, ast.ImportFrom, ast.alias, ast.FunctionDef,
               ast.arguments, ast.Assert, ast.Compare, ast.Eq, ast.Call, ast.Name, ast.Load, ast.Attribute,
               ast.Pass, ast.UnaryOp, ast.USub, ast.Tuple)


def assert_only_intended_nodes(source: str) -> None:
    """The module's shape: a docstring, then plain functions (or imports and asserts, for the tests)."""
    tree = ast.parse(source)
    first, *rest = tree.body
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    is_test = any(isinstance(s, ast.ImportFrom) for s in rest)
    allowed = _TEST_NODES if is_test else _MODULE_NODES
    strings = {id(first.value)}
    for stmt in rest:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            assert is_test and [a.name for a in stmt.names] != [] and all(a.asname is None for a in stmt.names)
            assert isinstance(stmt, ast.ImportFrom) or [a.name for a in stmt.names] == ["pytest"]
            continue
        assert isinstance(stmt, ast.FunctionDef) and not stmt.decorator_list and stmt.returns is None
        assert stmt.name.isidentifier() and not keyword.iskeyword(stmt.name)
        if is_test:
            assert stmt.name.startswith("test_") and not stmt.args.args
            assert all(isinstance(s, ast.Assert | ast.Pass) for s in stmt.body)
        else:
            doc, ret = stmt.body
            assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), ast.dump(doc)
            assert isinstance(doc.value.value, str) and isinstance(ret, ast.Return)
            strings.add(id(doc.value))
            names = {a.arg for a in stmt.args.args} | set(llm_module._CALLS)
            assert {n.id for n in ast.walk(ret) if isinstance(n, ast.Name)} <= names
        for node in ast.walk(stmt):
            assert isinstance(node, allowed), f"{type(node).__name__} in {source!r}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert id(node) in strings, f"a string outside a docstring: {node.value!r}"
            if isinstance(node, ast.Attribute):
                assert (node.value.id, node.attr) == ("pytest", "approx")
            if isinstance(node, ast.Call) and is_test:
                assert isinstance(node.func, ast.Name | ast.Attribute)


def _code_outside_strings(source: str) -> str:
    """The source with every string constant emptied: what would run."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.unparse(tree)


_spec_text = st.one_of(
    st.text(max_size=300),
    st.text(st.characters(categories=["Cs", "Ll", "Po", "Zs"]), max_size=60),  # lone surrogates, as "\ud800" in JSON
    st.builds("{}({}) returns {}".format,
              st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
              st.sampled_from(["x", "a, b", "", "a, b, c"]),
              st.text(alphabet=st.sampled_from(list("abcx0123456789+-*/%()<>=!#'\"\\ ;,.\n_")), max_size=60)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spec_text)
def test_for_any_spec_the_program_holds_only_the_intended_nodes(spec):
    files = write_program(spec)
    assert len(files) == 2 and all(p.endswith(".py") and "/" not in p for p in files)
    assert all(isinstance(c.encode("utf-8"), bytes) for c in files.values())  # writable as UTF-8
    module, tests = files.values()
    assert_only_intended_nodes(module)
    assert_only_intended_nodes(tests)
    words = {w for w in re.findall(r"[A-Za-z_]\w*", _code_outside_strings(module + tests))}
    identifiers = {fn.name for fn in parse_spec(spec)} | {p for fn in parse_spec(spec) for p in fn.params}
    # Outside string constants, nothing but the spec's checked identifiers and the generator's own words.
    assert words <= identifiers | set(llm_module._CALLS) | {"def", "return", "assert", "import", "from", "pytest",
                                                            "approx", "if", "else", "and", "or", "not", "True",
                                                            "False", "None", "pass", "e"} | {
        f"test_{fn.name}" for fn in parse_spec(spec)} | {module_name(fn) for fn in parse_spec(spec)}
