"""Conditions and data mappings in JMESPath: a safe, well-known expression language (never ``eval``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from bus.errors import ContractError


@lru_cache(maxsize=4096)
def compile_expression(expression: str):
    """Parse once; a bad expression is a ContractError naming it."""
    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        raise ContractError(f"bad expression {expression!r}: {exc}", code="definition.invalid") from None


def evaluate(expression: str, scope: dict[str, Any]) -> Any:
    """The value of ``expression`` over ``scope`` (``input``, ``context``, ``item``, ``branches`` …).

    Raises:
        ContractError: the expression does not parse or fails at run time.
    """
    try:
        return compile_expression(expression).search(scope)
    except JMESPathError as exc:
        raise ContractError(f"expression {expression!r} failed: {exc}", code="expression.failed") from None


def truthy(value: Any) -> bool:
    """JMESPath truth: false, null, empty strings, lists and objects are false; numbers are true."""
    return value not in (None, False, "", [], {})


def render(mapping: Any, scope: dict[str, Any]) -> Any:
    """Build a value from a mapping: strings are expressions, ``{"$literal": v}`` is ``v`` itself,
    dicts and lists are rendered member by member, other scalars stand for themselves."""
    if isinstance(mapping, str):
        return evaluate(mapping, scope)
    if isinstance(mapping, dict):
        if set(mapping) == {"$literal"}:
            return mapping["$literal"]
        return {key: render(value, scope) for key, value in mapping.items()}
    if isinstance(mapping, list):
        return [render(value, scope) for value in mapping]
    return mapping
