"""Tool calls as a grammar: the name is one of the offered tools, the arguments follow its schema.

Standard library only. The grammar is an xgrammar *structural tag*: text is free until the model
writes the trigger of its tool-call syntax (``<tool_call>`` for Hermes/Qwen, ``{"name": `` for
Llama 3's bare JSON), and from there the call is held to
``<tool_call>\\n{"name": "<tool>", "arguments": <that tool's schema>}\\n</tool_call>``. When
``tool_choice`` forces a call ("any"/"required"/True/a name) the answer is exactly one call.
The texts here are the ones ``chat_format.parse_tool_calls`` reads back and the ones
``chat_prompt.tool_call_prefix`` forces, character for character.
"""

from __future__ import annotations

import json
from typing import Any

from budgetllm.constrain.spec import GrammarSpec, _canonical, check_schema, parse_response_format
from budgetllm.errors import InvalidRequestError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
FORMATS = {
    # format: (trigger, begin of one call before the arguments, end after them, name key)
    "hermes": (TOOL_CALL_OPEN, TOOL_CALL_OPEN + '\n{{"name": {name}, "arguments": ', "}\n" + TOOL_CALL_CLOSE),
    "llama3": ('{"name": ', '{{"name": {name}, "parameters": ', "}"),
}


def _function(tool: dict[str, Any], i: int) -> dict[str, Any]:
    fn = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequestError(f"tools[{i}]", "each tool needs a function name")
    return fn


def forced_names(tool_choice: Any, names: list[str]) -> list[str] | None:
    """The tools a call must use under ``tool_choice`` (None: the model may answer in text)."""
    if tool_choice in (None, "auto", False):
        return None
    if tool_choice == "none":
        return []
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if tool_choice in ("any", "required", True):
        return names
    if isinstance(tool_choice, str) and tool_choice in names:
        return [tool_choice]
    raise InvalidRequestError("tool_choice", f"names no offered tool: {tool_choice!r}; offered: {', '.join(names)}")


def tool_call_spec(tools: list[dict[str, Any]] | None, tool_choice: Any = None,
                   fmt: str = "hermes") -> GrammarSpec | None:
    """The structural tag that keeps a call's tool calls valid (None: no tools, or tool_choice "none")."""
    if not tools:
        return None
    if fmt not in FORMATS:
        raise InvalidRequestError("tool_format", f"unknown tool-call format {fmt!r}; use {', '.join(FORMATS)}")
    fns = [_function(t, i) for i, t in enumerate(tools)]
    names = [f["name"] for f in fns]
    forced = forced_names(tool_choice, names)
    if forced == []:
        return None
    trigger, begin, end = FORMATS[fmt]
    tags = []
    for i, fn in enumerate(fns):
        if forced is not None and fn["name"] not in forced:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        check_schema(params, f"tools[{i}].function.parameters")
        if isinstance(params, dict) and "type" not in params and "properties" in params:
            params = {**params, "type": "object"}
        tags.append({"type": "tag", "begin": begin.format(name=json.dumps(fn["name"], ensure_ascii=False)),
                     "content": _json(params), "end": end})
    if forced is None:
        fmt_ = {"type": "triggered_tags", "triggers": [trigger], "tags": tags}
    else:  # the answer is tool calls only, at least one
        fmt_ = _calls_only(tags)
    return GrammarSpec("structural_tag", _canonical({"type": "structural_tag", "format": fmt_}))


def _json(schema: Any) -> dict[str, Any]:
    # at most one blank in a row: '{"a": 1, "b": 2}' and the compact form, never runaway whitespace
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": 1}


def _calls_only(tags: list[dict[str, Any]]) -> dict[str, Any]:
    """Exactly one call, then the end (a forced call is one call: small models repeat it otherwise)."""
    return {"type": "tags_with_separator", "tags": tags, "separator": "\n", "at_least_one": True,
            "stop_after_first": True}


def _as_format(spec: GrammarSpec) -> dict[str, Any]:
    """A response_format spec as one element of a structural tag."""
    if spec.kind == "json_schema":
        return _json(json.loads(spec.source))
    if spec.kind == "json_object":
        return _json({"type": "object"})
    if spec.kind == "regex":
        return {"type": "regex", "pattern": spec.source}
    return {"type": "grammar", "grammar": spec.source}


def call_spec(response_format: Any, tools: list[dict[str, Any]] | None, tool_choice: Any = None,
              fmt: str = "hermes") -> GrammarSpec | None:
    """The grammar of one call: its response_format, its tool calls, or either (an agent that may
    call a tool or give its final structured answer). A forced tool call wins over the format."""
    rf = parse_response_format(response_format)
    calls = tool_call_spec(tools, tool_choice, fmt)
    if rf is None or calls is None:
        return rf or calls
    if forced_names(tool_choice, [_function(t, i)["name"] for i, t in enumerate(tools or [])]) is not None:
        return calls
    tags = json.loads(calls.source)["format"]["tags"]
    both = {"type": "or", "elements": [_calls_only(tags), _as_format(rf)]}
    return GrammarSpec("structural_tag", _canonical({"type": "structural_tag", "format": both}))
