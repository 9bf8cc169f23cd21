"""The input-schema subset: schemas are checked when a definition loads; payloads are refused with their path."""

from __future__ import annotations

import pytest

from bus.errors import ContractError, InvalidRequest
from coordinator.definitions import parse_definition
from coordinator.inputs import ANY_OBJECT, check_payload, check_schema, problems

DOCS = {
    "type": "object",
    "required": ["documents"],
    "additionalProperties": False,
    "properties": {"documents": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "required": ["id", "text"],
        "properties": {"id": {"type": "string", "minLength": 1}, "text": {"type": "string"}}}}},
}


def messages(value, schema=DOCS) -> list[str]:
    return [str(p) for p in problems(value, schema)]


def test_a_payload_that_fits_has_no_problems():
    assert messages({"documents": [{"id": "a", "text": "x", "lang": "en"}]}) == []


@pytest.mark.parametrize("payload, expected", [
    ({}, ["documents: field required"]),
    ({"documents": "a.txt"}, ["documents: must be an array, got string"]),
    ({"documents": []}, ["documents: must have at least 1 item"]),
    ({"documents": [{"id": "a"}] * 4}, ["documents: must have at most 3 items", "documents[0].text: field required",
                                        "documents[1].text: field required", "documents[2].text: field required",
                                        "documents[3].text: field required"]),
    ({"documents": [{"id": "a", "text": "x"}, {"text": 3}]},
     ["documents[1].id: field required", "documents[1].text: must be a string, got integer"]),
    ({"documents": [{"id": "", "text": "x"}]}, ["documents[0].id: must have at least 1 character"]),
    ({"documents": [{"id": "a", "text": "x"}], "path": "/etc"}, ["path: unknown field (known: documents)"]),
    ({"documents": [None]}, ["documents[0]: must be an object, got null"]),
])
def test_every_problem_names_its_path(payload, expected):
    assert messages(payload) == expected


def test_types_bounds_patterns_and_enums():
    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": 5},
        "x": {"type": ["number", "null"]},
        "mode": {"enum": ["fast", "slow"]},
        "spec": {"type": "string", "pattern": r"\S", "maxLength": 4},
        "flag": {"type": "boolean"}}}
    assert messages({"n": 3, "x": None, "mode": "fast", "spec": " ab ", "flag": False}, schema) == []
    assert messages({"n": 2.0, "x": 1.5}, schema) == []  # 2.0 is an integer in JSON
    assert messages({"n": True}, schema) == ["n: must be an integer, got boolean"]
    assert messages({"n": 0}, schema) == ["n: must be at least 1"]
    assert messages({"n": 9}, schema) == ["n: must be at most 5"]
    assert messages({"x": "1"}, schema) == ["x: must be a number or a null, got string"]
    assert messages({"mode": "warp"}, schema) == ["mode: must be one of 'fast', 'slow'"]
    assert messages({"spec": "   "}, schema) == ["spec: must match the pattern '\\\\S'"]
    assert messages({"spec": "abcde"}, schema) == ["spec: must have at most 4 characters"]
    assert messages({"flag": 1}, schema) == ["flag: must be a boolean, got integer"]


def test_any_of_required_fields_reads_as_one_problem():
    schema = {"type": "object", "anyOf": [{"required": ["proposal"]}, {"required": ["spec"]}]}
    assert messages({"spec": "x"}, schema) == []
    assert messages({}, schema) == ["payload: field required: proposal or spec"]
    typed = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert messages([], typed) == ["payload: must match one of the alternatives: payload: must be a string, got "
                                   "array | payload: must be an integer, got array"]


def test_keys_from_the_payload_are_quoted_and_cut_in_paths():
    schema = {"type": "object", "additionalProperties": False, "properties": {}}
    [odd] = messages({"a.b": 1}, schema)
    assert odd == '["a.b"]: unknown field (known: none)'
    [long] = messages({"k" * 500: 1}, schema)
    assert len(long) < 120


def test_additional_properties_may_be_a_schema():
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert messages({"a": 1, "b": "2"}, schema) == ["b: must be an integer, got string"]


def test_check_payload_raises_payload_invalid_with_every_path():
    with pytest.raises(InvalidRequest) as err:
        check_payload({"documents": [{}]}, DOCS, intent="index")
    assert err.value.code == "payload.invalid"
    assert str(err.value) == "documents[0].id: field required (and 1 more)"
    assert err.value.details == {"intent": "index", "errors": [
        {"path": "documents[0].id", "message": "field required"},
        {"path": "documents[0].text", "message": "field required"}]}
    check_payload({"documents": [{"id": "a", "text": ""}]}, DOCS, intent="index")  # fits: no error


def test_a_huge_payload_lists_a_bounded_number_of_problems():
    with pytest.raises(InvalidRequest) as err:
        check_payload({"documents": [{}] * 10_000}, {**DOCS, "properties": {"documents": {
            **DOCS["properties"]["documents"], "maxItems": 100_000}}}, intent="index")
    assert len(err.value.details["errors"]) == 20


@pytest.mark.parametrize("schema, where", [
    ({"type": "strin"}, "type"),
    ({"properties": {"a": {"format": "email"}}}, "properties.a.format"),
    ({"properties": {"a": {"items": {"minLength": -1}}}}, "properties.a.items.minLength"),
    ({"properties": {"a": {"maximum": "5"}}}, "properties.a.maximum"),
    ({"anyOf": [{"pattern": "("}]}, "anyOf[0].pattern"),
    ({"required": "a"}, "required"),
    ({"properties": []}, "properties"),
    ({"enum": []}, "enum"),
    ({"additionalProperties": {"type": 5}}, "additionalProperties.type"),
])
def test_a_schema_outside_the_subset_is_refused_naming_the_place(schema, where):
    with pytest.raises(ValueError, match=rf"^{where.replace('[', '[[]')}: "):
        check_schema(schema)


def test_a_definition_with_an_input_schema_exposes_it_and_one_without_accepts_any_object():
    base = {"name": "x", "start": "e", "nodes": {"e": {"kind": "end", "output": "input"}}}
    declared = parse_definition({**base, "input": {"required": ["a"], "properties": {"a": {"type": "string"}}}})
    assert declared.input_schema == {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}}
    assert parse_definition(base).input is None and parse_definition(base).input_schema == ANY_OBJECT


@pytest.mark.parametrize("schema, message", [
    ({"type": "array"}, "input: type: a payload is an object"),
    ({"properties": {"a": {"type": "text"}}}, "input: properties.a.type: must be one of"),
    ({"minProperties": 1}, "input: minProperties: unsupported keyword"),
])
def test_a_definition_with_a_bad_input_schema_fails_to_load(schema, message):
    with pytest.raises(ContractError) as err:
        parse_definition({"name": "x", "start": "e", "input": schema, "nodes": {"e": {"kind": "end"}}})
    assert err.value.code == "definition.invalid" and message in str(err.value)
