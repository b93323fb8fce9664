"""Constrained generation on the reference backend (tiny random model): answers always match.

The property test draws random JSON schemas (objects, arrays, enums, numbers, nested, required and
optional properties) with bounded leaves, so that every answer fits its token budget, and checks
that every sampled answer parses and validates against its schema.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetllm.constrain.mask import allocate_bitmask, apply_bitmask, apply_bitmask_reference
from budgetllm.errors import InvalidRequestError

pytest.importorskip("xgrammar")


def _loads(text: str):
    """The answer as strict JSON (json.loads refuses raw control characters inside strings: the
    grammar must not let them in, see budgetllm/constrain/compiler.py)."""
    return json.loads(text)

NAMES = st.sampled_from(["a", "b", "id", "name", "x_1", "value", "kind", "n"])
LEAVES = st.one_of(
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.integers(-50, 50).map(lambda lo: {"type": "integer", "minimum": lo, "maximum": lo + 200}),
    st.integers(0, 4).map(lambda n: {"type": "string", "maxLength": n}),
    st.lists(st.sampled_from(["red", "green", "blue", "x y", "é"]), min_size=1, max_size=4, unique=True).map(
        lambda v: {"enum": v}),
    st.lists(st.integers(-5, 5), min_size=1, max_size=3, unique=True).map(lambda v: {"enum": v}),
)


def _object(children):
    return st.dictionaries(NAMES, children, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda req: {"type": "object", "properties": props, "required": req}))


SCHEMAS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        _object(children),
        children.map(lambda c: {"type": "array", "items": c, "maxItems": 2}),
    ),
    max_leaves=5,
)


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm("llama")


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_object(SCHEMAS), seed=st.integers(0, 2**16), temperature=st.sampled_from([0.0, 1.0]))
def test_every_answer_validates(llm, schema, seed, temperature):
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    out = llm.generate("Answer in JSON.", response_format=rf, max_tokens=400, temperature=temperature, seed=seed)
    assert out.finish_reason == "stop", (schema, out.text)
    jsonschema.validate(_loads(out.text), schema)


def test_json_object_regex_and_grammar(llm):
    out = llm.generate("hi", response_format={"type": "json_object"}, max_tokens=200, temperature=1.0, seed=3)
    if out.finish_reason == "stop":  # free JSON can run past the budget on a random model
        assert isinstance(_loads(out.text), dict)
    else:
        assert out.text.lstrip().startswith("{")
    out = llm.generate("hi", response_format={"type": "regex", "pattern": r"(yes|no), [0-9]{2}"}, max_tokens=20,
                       temperature=1.0, seed=5)
    assert out.finish_reason == "stop" and re.fullmatch(r"(yes|no), [0-9]{2}", out.text)
    out = llm.generate("hi", response_format={"type": "grammar", "grammar": 'root ::= "A" | "B" "C"'}, max_tokens=5)
    assert out.text in ("A", "BC")


def test_forced_tool_call_is_valid(llm):
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}}, "required": ["expression"]}}},
        {"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"]}}}]
    for seed in range(3):
        out = llm.generate("2+2?", tools=tools, tool_choice="any", max_tokens=120, temperature=1.0, seed=seed)
        assert out.finish_reason == "tool_calls" and not out.invalid_tool_calls and out.tool_calls
        for call in out.tool_calls:
            params = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.name)
            jsonschema.validate(call.arguments, params)
    out = llm.generate("weather?", tools=tools, tool_choice="weather", max_tokens=60, temperature=1.0, seed=1)
    assert [c.name for c in out.tool_calls] == ["weather"] and out.tool_calls[0].arguments["city"] in ("Paris", "Oslo")


def test_schema_compiles_once(llm):
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "properties": {
        "ok": {"type": "boolean"}}, "required": ["ok"]}}}
    llm.generate("a", response_format=rf, max_tokens=20)
    before = llm._grammar.compiles
    out = llm.generate("b", response_format=rf, max_tokens=20)
    assert llm._grammar.compiles == before and _loads(out.text)["ok"] in (True, False)


def test_bad_schema_is_invalid_request(llm):
    with pytest.raises(InvalidRequestError) as e:
        llm.generate("a", response_format={"type": "json_schema", "json_schema": {
            "name": "s", "schema": {"type": "object", "properties": {"x": {"type": "str"}}}}})
    assert e.value.field == "response_format.json_schema.schema.properties.x.type"
    with pytest.raises(InvalidRequestError) as e:
        llm.generate("a", response_format={"type": "grammar", "grammar": "root ::= undefined_rule"})
    assert e.value.field == "response_format.grammar"
    assert llm.generate("still fine", max_tokens=3).usage.output_tokens > 0


def test_dead_end_ends_the_request(llm):
    # "é" is two bytes that no single-byte path can finish inside an ASCII-only regex: the grammar
    # forbids every token after the first character; the request must end, not loop.
    out = llm.generate("a", response_format={"type": "regex", "pattern": "a[\u4e00-\u4e01]{40}"}, max_tokens=30, seed=0)
    assert out.finish_reason in ("length", "stop") and out.usage.output_tokens <= 30


def test_cancel_frees_the_matcher(llm):
    from budgetllm.constrain import Constraint

    seen: list[Constraint] = []
    orig = llm._constraint

    def spy(call):
        c = orig(call)
        seen.append(c)
        return c

    llm._constraint = spy
    try:
        it = llm.stream("a", response_format={"type": "json_object"}, max_tokens=200, temperature=1.0, seed=2)
        next(it)
        assert not seen[0].closed
        it.close()
    finally:
        del llm._constraint
    assert seen[0].closed


def test_apply_bitmask_matches_the_naive_twin():
    g = torch.Generator().manual_seed(0)
    for vocab, batch, rows, width in ((70, 3, [0, 2], 3), (64, 2, None, 2), (33, 4, [3], 2), (70, 3, [1], 2),
                                      (70, 2, None, 2)):  # width 2 < 70 tokens: logits wider than the mask
        logits = torch.randn(batch, vocab, generator=g)
        k = len(rows) if rows is not None else batch
        bits = torch.randint(-2**31, 2**31 - 1, (k, width), generator=g, dtype=torch.int64).to(torch.int32)
        a, b = logits.clone(), logits.clone()
        apply_bitmask(a, bits, None if rows is None else torch.tensor(rows))
        apply_bitmask_reference(b, bits, rows)
        assert torch.equal(a, b)
    full = allocate_bitmask(2, 50)
    x = torch.randn(2, 50)
    y = x.clone()
    apply_bitmask(y, full)
    assert torch.equal(x, y)
