"""A workflow's input schema: a small, checked subset of JSON Schema, and the validation of a payload.

A definition may declare ``input`` (what its intent's payload must look like). The schema is checked
when the definition loads, so a keyword this module does not enforce is refused instead of silently
ignored; a payload is checked at ingress, and every problem names its path
(``documents[0].text: field required``), so a bad payload never reaches a worker.

Supported: ``type`` (``object``, ``array``, ``string``, ``integer``, ``number``, ``boolean``, ``null``, or
a list of them), ``properties``, ``required``, ``additionalProperties`` (a boolean or a schema),
``items``, ``minItems``/``maxItems``, ``minLength``/``maxLength``, ``pattern`` (a regular expression
searched in the string, as JSON Schema does), ``minimum``/``maximum``, ``enum``, ``anyOf``; and the
annotations ``title``, ``description``, ``default``, ``examples``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.errors import InvalidRequest

ANY_OBJECT: dict[str, Any] = {"type": "object"}
"""The schema of a workflow that declares no ``input``: any JSON object is accepted."""
MAX_PROBLEMS = 20
"""Most problems one answer lists (the message shows the first)."""

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "pattern", "minimum",
                       "maximum", "enum", "anyOf", *_COUNTS}) | _ANNOTATIONS


@dataclass(frozen=True)
class Problem:
    """One way a payload breaks its schema: where (``documents[0].text``) and what."""

    path: str
    """Empty for the payload itself."""
    message: str

    @property
    def where(self) -> str:
        """The path as a person reads it: ``payload`` for the payload itself."""
        return self.path or "payload"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# -- the schema itself, checked when a definition loads --------------------------------------------------
def check_schema(schema: Any, where: str = "") -> dict[str, Any]:
    """Check that ``schema`` uses only the supported subset, correctly; returns it unchanged.

    Raises:
        ValueError: naming the place in the schema (``properties.documents.items``) and the fault.
    """
    if not isinstance(schema, dict):
        raise ValueError(f"{where or 'the schema'}: a schema must be a mapping, got {_json_type(schema)}")
    unknown = sorted(set(schema) - _KEYWORDS)
    if unknown:
        raise ValueError(f"{_at(where, unknown[0])}: unsupported keyword (supported: {', '.join(sorted(_KEYWORDS))})")
    _check_type(schema, where)
    for key in _COUNTS:
        if key in schema and not _is_count(schema[key]):
            raise ValueError(f"{_at(where, key)}: must be a non-negative integer")
    for key in ("minimum", "maximum"):
        if key in schema and not _is_number(schema[key]):
            raise ValueError(f"{_at(where, key)}: must be a number")
    if "pattern" in schema:
        _check_pattern(schema["pattern"], _at(where, "pattern"))
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise ValueError(f"{_at(where, 'enum')}: must be a non-empty list")
    _check_children(schema, where)
    return schema


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_type(schema: dict[str, Any], where: str) -> None:
    if "type" not in schema:
        return
    declared = schema["type"]
    names = declared if isinstance(declared, list) else [declared]
    if not names or not all(isinstance(n, str) and n in _TYPES for n in names):
        raise ValueError(f"{_at(where, 'type')}: must be one of {', '.join(_TYPES)} (or a list of them), "
                         f"got {declared!r}")


def _check_pattern(pattern: Any, where: str) -> None:
    if not isinstance(pattern, str):
        raise ValueError(f"{where}: must be a string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: not a valid regular expression ({exc})") from None


def _check_children(schema: dict[str, Any], where: str) -> None:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ValueError(f"{_at(where, 'properties')}: must be a mapping of field names to schemas")
    for name, child in properties.items():
        check_schema(child, _at(where, f"properties.{name}"))
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError(f"{_at(where, 'required')}: must be a list of field names")
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        check_schema(extra, _at(where, "additionalProperties"))
    if "items" in schema:
        check_schema(schema["items"], _at(where, "items"))
    if "anyOf" in schema:
        options = schema["anyOf"]
        if not isinstance(options, list) or not options:
            raise ValueError(f"{_at(where, 'anyOf')}: must be a non-empty list of schemas")
        for i, option in enumerate(options):
            check_schema(option, _at(where, f"anyOf[{i}]"))


def object_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The payload schema of a definition: its declared ``input`` (always an object), or any object."""
    if schema is None:
        return dict(ANY_OBJECT)
    return schema if "type" in schema else {"type": "object", **schema}


# -- a payload, checked at ingress -------------------------------------------------------------------------
def problems(value: Any, schema: dict[str, Any], path: str = "") -> list[Problem]:
    """Every way ``value`` breaks ``schema`` (a checked schema), in document order; empty when it fits."""
    if "type" in schema and not _has_type(value, schema["type"]):
        return [Problem(path, f"must be {_type_words(schema['type'])}, got {_json_type(value)}")]
    found: list[Problem] = []
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        found.append(Problem(path, f"must be one of {', '.join(_show(v) for v in schema['enum'])}"))
    if "anyOf" in schema:
        found.extend(_any_of(value, schema["anyOf"], path))
    for check in _CHECKS:
        found.extend(check(value, schema, path))
    return found


def _object(value: Any, schema: dict[str, Any], path: str) -> list[Problem]:
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties", {})
    found = [Problem(_key(path, name), "field required") for name in schema.get("required", ()) if name not in value]
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            found.extend(problems(item, properties[name], _key(path, name)))
        elif extra is False:
            known = ", ".join(sorted(properties)) or "none"
            found.append(Problem(_key(path, name), f"unknown field (known: {known})"))
        elif isinstance(extra, dict):
            found.extend(problems(item, extra, _key(path, name)))
    return found


def _array(value: Any, schema: dict[str, Any], path: str) -> list[Problem]:
    if not isinstance(value, list):
        return []
    found = _sizes(len(value), schema, path, "minItems", "maxItems", "item")
    if "items" in schema:
        for i, item in enumerate(value):
            found.extend(problems(item, schema["items"], f"{path}[{i}]"))
            if len(found) > MAX_PROBLEMS:
                break
    return found


def _string(value: Any, schema: dict[str, Any], path: str) -> list[Problem]:
    if not isinstance(value, str):
        return []
    found = _sizes(len(value), schema, path, "minLength", "maxLength", "character")
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        found.append(Problem(path, f"must match the pattern {schema['pattern']!r}"))
    return found


def _number(value: Any, schema: dict[str, Any], path: str) -> list[Problem]:
    if not _is_number(value):
        return []
    found = []
    if "minimum" in schema and not value >= schema["minimum"]:
        found.append(Problem(path, f"must be at least {schema['minimum']}"))
    if "maximum" in schema and not value <= schema["maximum"]:
        found.append(Problem(path, f"must be at most {schema['maximum']}"))
    return found


_CHECKS: tuple[Callable[[Any, dict[str, Any], str], list[Problem]], ...] = (_object, _array, _string, _number)


def _sizes(size: int, schema: dict[str, Any], path: str, low: str, high: str, unit: str) -> list[Problem]:
    if low in schema and size < schema[low]:
        return [Problem(path, f"must have at least {_count(schema[low], unit)}")]
    if high in schema and size > schema[high]:
        return [Problem(path, f"must have at most {_count(schema[high], unit)}")]
    return []


def _any_of(value: Any, options: list[dict[str, Any]], path: str) -> list[Problem]:
    attempts = [problems(value, option, path) for option in options]
    if any(not found for found in attempts):
        return []
    if all(p.message == "field required" for found in attempts for p in found):
        fields = " or ".join(dict.fromkeys(p.where for found in attempts for p in found))
        return [Problem(path, f"field required: {fields}")]
    alternatives = " | ".join("; ".join(str(p) for p in found[:3]) for found in attempts)
    return [Problem(path, f"must match one of the alternatives: {alternatives}")]


def _key(path: str, name: str) -> str:
    """``path.name``; a name that is not a plain word is quoted (and cut: it comes from the payload)."""
    if _PLAIN_KEY.fullmatch(name):
        return f"{path}.{name}" if path else name
    return f"{path}[{json.dumps(name[:64] + ('…' if len(name) > 64 else ''))}]"


def _has_type(value: Any, declared: str | list[str]) -> bool:
    names = declared if isinstance(declared, list) else [declared]
    return any(_IS[name](value) for name in names)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_IS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: _is_number(v) and float(v).is_integer(),
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _IS[name](value):
            return name
    return type(value).__name__


def _type_words(declared: str | list[str]) -> str:
    names = declared if isinstance(declared, list) else [declared]
    return " or ".join(("an " if n[0] in "aeiou" else "a ") + n for n in names)


def _same(value: Any, option: Any) -> bool:
    return value == option and isinstance(value, bool) == isinstance(option, bool)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def check_payload(payload: Any, schema: dict[str, Any], *, intent: str) -> None:
    """Refuse a payload that breaks its intent's schema.

    Raises:
        InvalidRequest: code ``payload.invalid`` (HTTP 422); the message is the first problem with its path
            (``documents[0].text: field required``); ``details.errors`` lists up to ``MAX_PROBLEMS``
            as ``{path, message}``, ``details.intent`` names the intent.
    """
    found = problems(payload, schema)
    if not found:
        return
    listed = [{"path": p.where, "message": p.message} for p in found[:MAX_PROBLEMS]]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise InvalidRequest(f"{found[0]}{more}", code="payload.invalid",
                        details={"intent": intent, "errors": listed})
