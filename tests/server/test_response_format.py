"""response_format and tool_choice on the server: json_schema / json_object reach the engine; a bad
schema is a 400 naming its path inside the schema; tool_choice "required" and named functions pass."""

from __future__ import annotations

import httpx

OK_BODY = {"messages": [{"role": "user", "content": "hi"}]}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


def post(server, body):
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)


def test_json_schema_and_json_object_reach_the_engine(server):
    for rf in ({"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
               {"type": "json_object"}, {"type": "text"}):
        r = post(server, {**OK_BODY, "response_format": rf})
        assert r.status_code == 200, r.text
        assert server.llm.calls[-1]["response_format"] == rf


def test_bad_schema_is_a_400_naming_the_path(server):
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"answer": {"type": "int"}}}}}
    r = post(server, {**OK_BODY, "response_format": bad})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith("response_format")
    assert "response_format.json_schema.schema.properties.answer.type" in err["message"]


def test_tool_choice_required_and_named(server):
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        r = post(server, {**OK_BODY, "tools": TOOLS, "tool_choice": choice})
        assert r.status_code == 200, r.text
        assert server.llm.calls[-1]["tool_choice"] == choice
