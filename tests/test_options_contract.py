"""One options contract: CallOptions lists the per-call fields, their bounds and the effort levels;
the server schema, the policy file schema, the CLI flags and RequestedLimits must agree with it.
Each test fails when one of them drifts (a field added on one side only, a bound changed)."""

from __future__ import annotations

from dataclasses import fields

import pytest

import budgetllm
from budgetllm.errors import BudgetLLMError, InvalidRequestError
from budgetllm.options import EFFORT_LEVELS, CallOptions, check_option, validate_options

# Options that only the Python API takes (objects that do not travel as JSON).
PYTHON_ONLY = {"policy"}


def _json_bounds(prop: dict) -> dict:
    for alt in prop.get("anyOf", [prop]):
        if alt.get("type") in ("integer", "number"):
            return {k: alt[k] for k in ("minimum", "maximum", "exclusiveMinimum") if k in alt}
    return {}


def _want(name: str) -> dict:
    b = CallOptions.bounds()[name]
    return {k: v for k, v in (("minimum", b.ge), ("maximum", b.le), ("exclusiveMinimum", b.gt)) if v is not None}


def test_exported_and_listed():
    assert budgetllm.CallOptions is CallOptions and budgetllm.validate_options is validate_options
    names = CallOptions.field_names()
    assert "temperature_requested" not in names and {"max_tokens", "compression", "seed", "stop"} <= set(names)
    assert set(CallOptions.bounds()) == set(names)


def test_server_schema_has_every_option_with_the_same_bounds():
    from budgetllm.server.schemas import ChatCompletionRequest

    props = ChatCompletionRequest.model_json_schema()["properties"]
    missing = set(CallOptions.field_names()) - PYTHON_ONLY - set(props)
    assert not missing, f"per-call options the server does not accept: {missing}"
    for name, b in CallOptions.bounds().items():
        if b.kind in ("int", "float"):
            assert _json_bounds(props[name]) == _want(name), name
    assert _json_bounds(props["max_completion_tokens"]) == _want("max_tokens")
    effort = next(a for a in props["reasoning_effort"]["anyOf"] if "enum" in a)
    assert tuple(effort["enum"]) == EFFORT_LEVELS


def test_server_passes_only_contract_options_to_the_engine():
    from budgetllm.server.schemas import ChatCompletionRequest

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "temperature": 0.5, "top_p": 0.9,
            "top_k": 4, "seed": 1, "stop": "x", "reasoning_effort": "low", "thinking_budget": 2, "answer_reserve": 1,
            "compression": 2, "policy_tier": "t", "tool_name": "f", "tool_choice": "auto", "tools": [tool],
            "agent_budget": {"tokens_left": 5}, "response_format": {"type": "json_object"}}
    opts = ChatCompletionRequest.model_validate(body).engine_options()
    assert set(opts) <= set(CallOptions.field_names())
    assert set(CallOptions.field_names()) - PYTHON_ONLY <= set(opts), "a contract field the server drops"
    validate_options(**{k: v for k, v in opts.items() if k != "policy_tier"})


def test_policy_file_schema_uses_the_same_bounds_and_levels():
    from typing import get_args

    from budgetllm.policy import EFFORT_LEVELS as POLICY_LEVELS
    from budgetllm.policy.file_schema import EffortEntry, EffortName

    assert POLICY_LEVELS is EFFORT_LEVELS and get_args(EffortName) == EFFORT_LEVELS
    props = EffortEntry.model_json_schema()["properties"]
    for name in ("thinking_budget", "answer_reserve", "max_tokens", "compression", "temperature", "top_p"):
        assert _json_bounds(props[name]) == _want(name), name


def test_requested_limits_are_contract_fields():
    from budgetllm.policy.base import RequestedLimits

    assert {f.name for f in fields(RequestedLimits)} <= set(CallOptions.field_names())


def test_cli_flags_are_contract_fields():
    from budgetllm.cli import build_parser

    parser = build_parser()
    gen = parser._subparsers._group_actions[0].choices["generate"]
    dests = {a.dest: a for a in gen._actions}
    not_call = {"help", "prompt", "model", "policy", "device", "backend", "adapter", "tier"}
    assert set(dests) - not_call <= set(CallOptions.field_names())
    assert tuple(dests["reasoning_effort"].choices) == EFFORT_LEVELS


@pytest.mark.parametrize("value", [0.5, 0, -1, float("inf"), float("nan"), "4", True])
def test_compression_bounds_agree_everywhere(value):
    from pydantic import ValidationError

    from budgetllm.server.schemas import ChatCompletionRequest

    with pytest.raises(InvalidRequestError) as e:
        check_option("compression", value)
    assert e.value.field == "compression"
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "compression": value})


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
        ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"), ({"seed": 2**64}, "seed"),
        ({"stop": 5}, "stop"), ({"stop": ["x" * 5000]}, "stop"), ({"tools": "abc"}, "tools"),
        ({"policy": "x.yaml"}, "policy"), ({"max_tokens": "8"}, "max_tokens"), ({"max_tokens": 10**400}, "max_tokens"),
        ({"tool_choice": "required"}, "tool_choice"), ({"tool_choice": "f", "tools": [{"name": "g"}]}, "tool_choice"),
        ({"agent_budget": {"tokens_left": 3}}, "agent_budget"), ({"max_token": 5}, "max_token"),
        ({"reasoning": True}, "reasoning"), ({"reasoning_effort": "max"}, "reasoning_effort"),
    ],
)
def test_validate_options_names_the_field(opts, field):
    with pytest.raises(InvalidRequestError) as e:
        validate_options(**opts)
    assert e.value.field == field and isinstance(e.value, BudgetLLMError)


def test_llm_and_remote_llm_both_have_what_llmlike_names():
    from budgetllm.llm import LLM
    from budgetllm.llm_like import LLMLike
    from budgetllm.server.client import RemoteLLM

    members = [n for n in dir(LLMLike) if not n.startswith("_")]
    assert {"generate", "agenerate", "stream", "astream", "count_tokens", "close", "model_name"} <= set(members)
    for cls in (LLM, RemoteLLM):
        assert [n for n in members if not hasattr(cls, n) and n not in _instance_attrs(cls)] == [], cls


def _instance_attrs(cls) -> set[str]:
    return {"model_name"} if cls.__name__ == "LLM" else set()  # LLM sets model_name in __init__
