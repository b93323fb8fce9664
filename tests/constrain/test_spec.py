"""The checks before any grammar is compiled: shapes of response_format and schema errors by path."""

from __future__ import annotations

import json

import pytest

from budgetllm.constrain import call_spec, parse_response_format, tool_call_spec
from budgetllm.errors import InvalidRequestError

CALC = {"type": "function", "function": {"name": "calculator", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def _rf(schema):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.mark.parametrize("schema, path", [
    ({"type": "object", "properties": {"a": {"type": "integr"}}}, "response_format.json_schema.schema.properties.a.type"),
    ({"type": "array", "items": {"type": "string", "pattern": "(unclosed"}}, "response_format.json_schema.schema.items.pattern"),
    ({"anyOf": []}, "response_format.json_schema.schema.anyOf"),
    ({"type": "object", "required": "a"}, "response_format.json_schema.schema.required"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "response_format.json_schema.schema.minLength"),
    ({"$ref": "http://example.com/s.json"}, "response_format.json_schema.schema.$ref"),
    ({"type": "object", "properties": {"n": {"type": "integer", "maximum": "9"}}}, "response_format.json_schema.schema.properties.n.maximum"),
    ([1, 2], "response_format.json_schema.schema"),
    ({"type": "string", "pattern": "[a-z]+", "maxLength": 3}, "response_format.json_schema.schema.maxLength"),
    ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}, "response_format.json_schema.schema.properties.n.multipleOf"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "response_format.json_schema.schema.uniqueItems"),
    ({"not": {"type": "string"}}, "response_format.json_schema.schema.not"),
])
def test_bad_schema_names_its_path(schema, path):
    with pytest.raises(InvalidRequestError) as e:
        parse_response_format(_rf(schema))
    assert e.value.field == path


@pytest.mark.parametrize("rf, field", [
    ("json", "response_format"), ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "regex", "pattern": "("}, "response_format.pattern"), ({"type": "grammar", "grammar": ""}, "response_format.grammar"),
])
def test_bad_response_format(rf, field):
    with pytest.raises(InvalidRequestError) as e:
        parse_response_format(rf)
    assert e.value.field == field


def test_text_and_none_are_unconstrained():
    assert parse_response_format(None) is None and parse_response_format({"type": "text"}) is None


def test_schema_key_keeps_property_order():
    a = parse_response_format(_rf({"type": "object", "properties": {"b": {}, "a": {}}}))
    b = parse_response_format(_rf({"type": "object", "properties": {"a": {}, "b": {}}}))
    assert a.key != b.key and list(json.loads(a.source)["properties"]) == ["b", "a"]


def test_tool_spec_auto_is_triggered_and_forced_is_calls_only():
    auto = json.loads(tool_call_spec([CALC, WEATHER], "auto").source)["format"]
    assert auto["type"] == "triggered_tags" and auto["triggers"] == ["<tool_call>"]
    assert [t["begin"] for t in auto["tags"]] == ['<tool_call>\n{"name": "calculator", "arguments": ',
                                                  '<tool_call>\n{"name": "weather", "arguments": ']
    named = json.loads(tool_call_spec([CALC, WEATHER], {"type": "function", "function": {"name": "weather"}}).source)
    assert named["format"]["at_least_one"] and named["format"]["stop_after_first"] and [t["begin"] for t in named["format"]["tags"]] == [
        '<tool_call>\n{"name": "weather", "arguments": ']
    assert tool_call_spec([CALC], "none") is None and tool_call_spec(None, "any") is None
    llama = json.loads(tool_call_spec([CALC], None, fmt="llama3").source)["format"]
    assert llama["tags"][0]["begin"] == '{"name": "calculator", "parameters": '


def test_tool_spec_errors_name_the_tool():
    with pytest.raises(InvalidRequestError) as e:
        tool_call_spec([CALC], "missing_tool")
    assert e.value.field == "tool_choice"
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}}}}
    with pytest.raises(InvalidRequestError) as e:
        tool_call_spec([CALC, bad])
    assert e.value.field == "tools[1].function.parameters.properties.x.type"


def test_call_spec_combines_tools_and_format_unless_a_call_is_forced():
    rf = _rf({"type": "object", "properties": {"answer": {"type": "integer"}}})
    both = json.loads(call_spec(rf, [CALC]).source)["format"]
    assert both["type"] == "or" and both["elements"][1]["json_schema"]["properties"]["answer"] == {"type": "integer"}
    forced = json.loads(call_spec(rf, [CALC], "any").source)["format"]
    assert forced["type"] == "tags_with_separator"
    assert call_spec(None, None) is None and call_spec(rf, None).kind == "json_schema"
