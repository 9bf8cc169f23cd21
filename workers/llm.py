"""The model behind codegen: an OpenAI Chat Completions client and a deterministic offline model.

Both answer ``complete(messages, model=...) -> Completion``, and both write files in the same
text format (see ``render_files`` / ``parse_files``), so codegen has one code path for either.

``LocalModel`` (used when no ``llm_url`` is configured) understands specs such as
"a function add(a, b) that returns a + b": it takes the function name and parameters from the
first ``name(params)``, and the body from the text after "returns" — either a Python expression
over the parameters (arithmetic, comparisons, ``abs``/``min``/``max``/``round``) or a phrase such as
"the sum of a and b". Several functions may be given, separated by ";", new lines or
"and a function". Anything it cannot read falls back to the generic template: a function (named
from the spec, else ``solution``) that returns its argument unchanged (a tuple for several, None
for none). It writes ``<name>.py`` and ``test_<name>.py`` whose expected values it computes itself.
"""

from __future__ import annotations

import ast
import keyword
import logging
import math
import operator
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from bus.errors import WorkFailed

log = logging.getLogger(__name__)

LOCAL_MODEL = "cogo-local"

PRICES_PER_1K: dict[str, tuple[float, float]] = {
    # model: (USD per 1K prompt tokens, USD per 1K completion tokens); dated variants match by prefix.
    LOCAL_MODEL: (0.0, 0.0),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4o-mini": (0.00015, 0.0006),
    "gpt-4.1": (0.002, 0.008),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1-nano": (0.0001, 0.0004),
    "gpt-3.5-turbo": (0.0005, 0.0015),
    "o3-mini": (0.0011, 0.0044),
}
UNKNOWN_MODEL_PRICE = (0.01, 0.03)
"""Price of a model missing from the table: deliberately high, so an unknown model can't dodge budgets."""

Message = Mapping[str, str]


@dataclass(frozen=True)
class Completion:
    """One model answer and what it cost."""

    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float


class ChatModel(Protocol):
    """Anything codegen can ask: the OpenAI client or the local model."""

    def complete(self, messages: Sequence[Message], *, model: str, temperature: float = 0.0,
                 max_tokens: int = 2048, timeout_s: float | None = None) -> Completion:
        """Answer ``messages``; raise ``WorkFailed`` when the model cannot."""
        ...


def price_usd(model: str, prompt_tokens: int, completion_tokens: int,
              prices: Mapping[str, tuple[float, float]] = PRICES_PER_1K) -> float:
    """Cost in USD of a call, from the per-1K-token price of ``model`` (longest prefix match)."""
    key = max((k for k in prices if model == k or model.startswith(k + "-")), key=len, default=None)
    per_prompt, per_completion = prices[key] if key else UNKNOWN_MODEL_PRICE
    return round((prompt_tokens * per_prompt + completion_tokens * per_completion) / 1000, 9)


def count_tokens(text: str) -> int:
    """A model-free token estimate: whitespace-separated words."""
    return len(text.split())


# ---------------------------------------------------------------- the OpenAI-compatible client


class OpenAIChatClient:
    """A client of ``POST {base_url}/v1/chat/completions`` (OpenAI and compatible servers)."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 300.0,
                 prices: Mapping[str, tuple[float, float]] = PRICES_PER_1K):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.prices = prices

    @property
    def endpoint(self) -> str:
        """The chat-completions URL; a base URL that already ends in ``/v1`` is not doubled."""
        root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        return f"{root}/v1/chat/completions"

    def complete(self, messages: Sequence[Message], *, model: str, temperature: float = 0.0,
                 max_tokens: int = 2048, timeout_s: float | None = None) -> Completion:
        """Send one chat completion and return its content, usage and cost.

        Raises:
            WorkFailed: ``llm.unavailable`` (retryable) for timeouts, connection errors, 429 and 5xx;
                ``llm.rejected`` for other 4xx; ``llm.bad_response`` for a body that is not a completion.
        """
        timeout = self.timeout_s if timeout_s is None else max(0.001, min(self.timeout_s, timeout_s))
        body = {"model": model, "messages": [dict(m) for m in messages],
                "temperature": temperature, "max_tokens": max_tokens}
        headers = {"Authorization": f"Bearer {self.api_key}"}
        try:
            response = httpx.post(self.endpoint, json=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise WorkFailed(f"LLM call to {self.base_url} timed out after {timeout:.1f}s",
                             retryable=True, code="llm.unavailable") from exc
        except httpx.HTTPError as exc:
            raise WorkFailed(f"LLM endpoint {self.base_url} unreachable: {exc}",
                             retryable=True, code="llm.unavailable") from exc
        _raise_for_status(response)
        return self._parse(response, model, messages)

    def _parse(self, response: httpx.Response, model: str, messages: Sequence[Message]) -> Completion:
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("choices[0].message.content must be a string")
            prompt, completion, total = _usage(data.get("usage"), messages, content)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise WorkFailed(f"LLM answer is not a chat completion: {exc}", retryable=False,
                             code="llm.bad_response", details={"body": response.text[:300]}) from exc
        return Completion(content=content, model=str(data.get("model") or model), prompt_tokens=prompt,
                          completion_tokens=completion, total_tokens=total,
                          cost_usd=price_usd(model, prompt, completion, self.prices))


def _usage(usage: object, messages: Sequence[Message], content: str) -> tuple[int, int, int]:
    if usage is None:
        # Some compatible servers omit usage; estimate it rather than let the call go unmetered.
        prompt = sum(count_tokens(m.get("content", "")) for m in messages)
        return prompt, count_tokens(content), prompt + count_tokens(content)
    if not isinstance(usage, dict):
        raise TypeError("usage must be an object")
    prompt = _token_field(usage, "prompt_tokens")
    completion = _token_field(usage, "completion_tokens")
    return prompt, completion, _token_field(usage, "total_tokens", default=prompt + completion)


def _token_field(usage: dict, name: str, default: int = 0) -> int:
    value = usage.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"usage.{name} must be a non-negative integer, got {value!r}")
    return value


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    details = {"status": status, "body": response.text[:300]}
    if status in (408, 429) or status >= 500:
        details["retry_after"] = response.headers.get("retry-after")
        raise WorkFailed(f"LLM endpoint answered {status}", retryable=True, code="llm.unavailable",
                         details=details)
    raise WorkFailed(f"LLM endpoint rejected the request with {status}", retryable=False,
                     code="llm.rejected", details=details)


# ---------------------------------------------------------------- the file format both models answer in

_FILE_BLOCK = re.compile(
    r"^[#*\s]*FILE:\s*`?(?P<path>[^`\n*]+?)`?[*\s]*\n```[\w+.-]*\n(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL)


def render_files(files: Mapping[str, str]) -> str:
    """Files as a model should answer: ``FILE: <path>`` then a fenced block, for each file."""
    return "\n".join(f"FILE: {path}\n```python\n{body.rstrip()}\n```\n" for path, body in files.items())


def parse_files(text: str) -> dict[str, str]:
    """The files in a model's answer, in order (a later block for the same path wins)."""
    return {m["path"].strip(): m["body"] for m in _FILE_BLOCK.finditer(text)}


# ---------------------------------------------------------------- the deterministic local model


@dataclass(frozen=True)
class FunctionSpec:
    """One function the local model will write; ``expr`` None means the generic template."""

    name: str
    params: tuple[str, ...]
    expr: str | None


_SIGNATURE = re.compile(r"\b([A-Za-z_]\w*)\s*\(([^()]*)\)")
_RETURNS = re.compile(r"\b(?:returns?|computes?|gives|yields|evaluates to)\b\s+(.+)", re.IGNORECASE | re.DOTALL)
_CLAUSE_SPLIT = re.compile(r"[;\n]+|,?\s+and\s+(?=(?:an?\s+)?function\b)", re.IGNORECASE)
_PHRASES = [  # English the local model understands, as (pattern over "X", "Y") -> expression
    (r"the sum of (\w+) and (\w+)", "{0} + {1}"), (r"the product of (\w+) and (\w+)", "{0} * {1}"),
    (r"the difference (?:of|between) (\w+) and (\w+)", "{0} - {1}"),
    (r"the quotient of (\w+) and (\w+)", "{0} / {1}"), (r"the square of (\w+)", "{0} ** 2"),
    (r"the cube of (\w+)", "{0} ** 3"), (r"the absolute value of (\w+)", "abs({0})"),
    (r"the (?:maximum|larger|greater) of (\w+) and (\w+)", "max({0}, {1})"),
    (r"the (?:minimum|smaller|lesser) of (\w+) and (\w+)", "min({0}, {1})"),
    (r"(?:twice|double) (\w+)", "2 * {0}"), (r"half (?:of )?(\w+)", "{0} / 2"),
]
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_CALLS = {"abs": abs, "min": min, "max": max, "round": round}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.IfExp, ast.Call, ast.Name,
            ast.Constant, ast.Load, ast.And, ast.Or, ast.Pow, *_BINOPS, *_UNARY, *_COMPARE)
_SAMPLES = ((2, 3, 5, 7, 11, 13), (10, 4, 6, 8, 9, 12), (-1, 8, 3, 2, 5, 4))
_LIMIT = 10**6
_RESERVED = frozenset({"pytest", *keyword.kwlist})


def parse_spec(spec: str) -> list[FunctionSpec]:
    """The functions a spec asks for (at least one: the generic template if nothing else)."""
    found = [fn for clause in _CLAUSE_SPLIT.split(spec) if (fn := _parse_clause(clause))]
    names, unique = set(), []
    for fn in found:
        if fn.name not in names:
            names.add(fn.name)
            unique.append(fn)
    return unique or [FunctionSpec("solution", ("value",), None)]


def _parse_clause(clause: str) -> FunctionSpec | None:
    match = _SIGNATURE.search(clause)
    if not match or match[1] in _CALLS or match[1] in _RESERVED:
        return None
    params = tuple(p.strip() for p in match[2].split(",") if p.strip())
    if not all(p.isidentifier() and p not in _RESERVED for p in params) or len(set(params)) != len(params):
        return FunctionSpec(match[1], ("value",), None)  # defaults, *args …: the generic template
    returns = _RETURNS.search(clause[match.end():])
    return FunctionSpec(match[1], params, _expression(returns[1], params) if returns else None)


def _expression(text: str, params: tuple[str, ...]) -> str | None:
    text = text.strip().rstrip(".").strip()
    candidates = [text]
    for pattern, template in _PHRASES:
        if m := re.fullmatch(pattern, text, re.IGNORECASE):
            candidates.insert(0, template.format(*m.groups()))
    for candidate in candidates:
        if _cases(candidate, params):
            return ast.unparse(_check(candidate, params).body)  # from the tree: no comment rides along
    return None


def _check(expr: str, params: tuple[str, ...]) -> ast.Expression | None:
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            return None
        if isinstance(node, ast.Name) and node.id not in params and node.id not in _CALLS:
            return None
        if isinstance(node, ast.Call) and (node.keywords or not isinstance(node.func, ast.Name)
                                           or node.func.id not in _CALLS):
            return None
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | bool | None):
            return None
    return tree


def _cases(expr: str | None, params: tuple[str, ...]) -> list[tuple[tuple, Any]]:
    """(arguments, expected value) pairs for ``expr``, computed by a small evaluator (never ``eval``)."""
    if expr is None:
        return [(s[:len(params)], s[0] if len(params) == 1 else s[:len(params)] or None) for s in _SAMPLES]
    tree = _check(expr, params)
    if tree is None:
        return []
    cases = []
    for sample in _SAMPLES:
        args = sample[:len(params)]
        try:
            value = _evaluate(tree.body, dict(zip(params, args, strict=True)))
        except (ArithmeticError, TypeError, ValueError, _TooBig):
            continue
        # Only plain, finite numbers whose repr is short make a readable assertion.
        if isinstance(value, bool | int | float) and math.isfinite(value) and len(repr(value)) <= 80:
            cases.append((args, value))
    return cases


class _TooBig(Exception):
    pass


def _evaluate(node: ast.AST, env: dict[str, Any]) -> Any:
    match node:
        case ast.Constant(value=value):
            if isinstance(value, int | float) and abs(value) > _LIMIT:
                raise _TooBig
            return value
        case ast.Name(id=name):
            return env[name]
        case ast.BinOp(left=left, op=ast.Pow(), right=right):
            base, exponent = _evaluate(left, env), _evaluate(right, env)
            if abs(exponent) > 64 or abs(base) > _LIMIT:  # keep 10 ** 10 ** 10 from eating the worker
                raise _TooBig
            return base ** exponent
        case ast.BinOp(left=left, op=op, right=right):
            return _BINOPS[type(op)](_evaluate(left, env), _evaluate(right, env))
        case ast.UnaryOp(op=op, operand=operand):
            return _UNARY[type(op)](_evaluate(operand, env))
        case ast.Compare(left=left, ops=ops, comparators=rest):
            values = [_evaluate(left, env), *(_evaluate(c, env) for c in rest)]
            return all(_COMPARE[type(o)](a, b) for o, a, b in zip(ops, values, values[1:], strict=False))
        case ast.BoolOp(op=op, values=values):
            results = (_evaluate(v, env) for v in values)
            return all(results) if isinstance(op, ast.And) else any(results)
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _evaluate(body if _evaluate(test, env) else orelse, env)
        case ast.Call(func=ast.Name(id=name), args=args):
            return _CALLS[name](*(_evaluate(a, env) for a in args))
    raise TypeError(f"unsupported expression node {type(node).__name__}")


def module_name(fn: FunctionSpec) -> str:
    """File stem for a function; avoids shadowing the standard library or looking like a test."""
    if fn.name in sys.stdlib_module_names or fn.name.startswith("test") or fn.name == "conftest":
        return f"{fn.name}_impl"
    return fn.name


def write_program(spec: str) -> dict[str, str]:
    """The module and its pytest test for ``spec``, as ``{path: content}``; same spec, same bytes.

    Both are built as syntax trees and unparsed: spec text reaches them only as identifiers that
    ``parse_spec`` checked, expressions that ``_check`` accepted (re-built from their tree, so a
    comment cannot ride along), and string constants — never pasted into source.
    """
    fns = parse_spec(spec)
    stem = module_name(fns[0])
    about = " ".join(spec.split())[:200].encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    module: list[ast.stmt] = [ast.Expr(ast.Constant(f"Generated by {LOCAL_MODEL} for the spec: {about}"))]
    tests: list[ast.stmt] = []
    for fn in fns:
        module.append(_function(fn))
        asserts = [_assertion(fn.name, args, value) for args, value in _cases(fn.expr, fn.params)]
        tests.append(_def(f"test_{fn.name}", (), asserts or [ast.Pass()]))
    imports: list[ast.stmt] = [ast.ImportFrom(module=stem, names=[ast.alias(fn.name) for fn in fns], level=0)]
    if any(isinstance(n, ast.Attribute) for t in tests for n in ast.walk(t)):
        imports.insert(0, ast.Import(names=[ast.alias("pytest")]))
    header = ast.Expr(ast.Constant(f"Tests of {stem}, generated by {LOCAL_MODEL}."))
    return {f"{stem}.py": _unparse(module), f"test_{stem}.py": _unparse([header, *imports, *tests])}


def _function(fn: FunctionSpec) -> ast.FunctionDef:
    if fn.expr is not None:
        tree = _check(fn.expr, fn.params)
        if tree is None:  # parse_spec only keeps expressions _check accepts
            raise ValueError(f"expression {fn.expr!r} is not in the safe subset")
        body, what = tree.body, f"Return {ast.unparse(tree.body)}."
    else:
        names = [ast.Name(p, ast.Load()) for p in fn.params]
        body = names[0] if len(names) == 1 else ast.Tuple(names, ast.Load()) if names else ast.Constant(None)
        what = "Return the argument(s) unchanged (generic template)."
    return _def(fn.name, fn.params, [ast.Expr(ast.Constant(what)), ast.Return(body)])


def _def(name: str, params: tuple[str, ...], body: list[ast.stmt]) -> ast.FunctionDef:
    if not name.isidentifier() or keyword.iskeyword(name) or not all(p.isidentifier() for p in params):
        raise ValueError(f"{name!r}({', '.join(params)}) is not a plain function signature")
    args = ast.arguments(posonlyargs=[], args=[ast.arg(p) for p in params], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])
    return ast.FunctionDef(name=name, args=args, body=body, decorator_list=[], returns=None, type_comment=None)


def _assertion(name: str, args: tuple, value: Any) -> ast.Assert:
    call = ast.Call(ast.Name(name, ast.Load()), [ast.Constant(a) for a in args], [])
    expected: ast.expr = ast.Constant(value)
    if isinstance(value, float):
        expected = ast.Call(ast.Attribute(ast.Name("pytest", ast.Load()), "approx", ast.Load()), [expected], [])
    return ast.Assert(ast.Compare(call, [ast.Eq()], [expected]))


def _unparse(body: list[ast.stmt]) -> str:
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))) + "\n"


_SPEC_TAG = re.compile(r"<spec>\s*(.*?)\s*</spec>", re.DOTALL)


class LocalModel:
    """A deterministic, offline stand-in for an LLM: spec in, module and test out, cost 0."""

    def complete(self, messages: Sequence[Message], *, model: str = LOCAL_MODEL, temperature: float = 0.0,
                 max_tokens: int = 2048, timeout_s: float | None = None) -> Completion:
        """Answer the last user message; the spec is inside ``<spec>…</spec>`` or is the whole message."""
        prompt = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        tagged = _SPEC_TAG.search(prompt)
        content = render_files(write_program(tagged[1] if tagged else prompt))
        prompt_tokens = sum(count_tokens(m.get("content", "")) for m in messages)
        completion_tokens = count_tokens(content)
        return Completion(content=content, model=LOCAL_MODEL, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens,
                          cost_usd=0.0)


def model_for(ctx: Any) -> ChatModel:
    """The model for an attempt: the local one without ``llm_url`` or when ``cogo-local`` is asked for."""
    requested = ctx.assignment.model
    if requested == LOCAL_MODEL or requested.startswith(LOCAL_MODEL + "-"):
        return LocalModel()
    if not ctx.llm_url:
        # The embedded default has no paid endpoint; say so instead of failing every codegen.
        log.warning("no COGO_LLM_URL configured; %s answered for model %r", LOCAL_MODEL, requested)
        return LocalModel()
    return OpenAIChatClient(ctx.llm_url, ctx.llm_api_key)
