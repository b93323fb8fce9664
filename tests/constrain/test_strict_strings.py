"""JSON strings under a grammar are strict JSON strings: no raw control character (U+0000-U+001F)
can be generated inside one, in every place a schema puts a string (bounded or not, in a
response_format and in tool-call arguments). xgrammar 0.2.8's own converter lets them into
length-bounded strings (checked below, so this test notices when that changes)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xgrammar")

import xgrammar as xgr  # noqa: E402

from budgetllm.constrain import GrammarCompiler, call_spec  # noqa: E402
from budgetllm.constrain.mask import allocate_bitmask, allowed_tokens  # noqa: E402

SCHEMA = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 6},
                                           "t": {"type": "string", "minLength": 1},
                                           "u": {"type": "string"}}, "required": ["s", "t", "u"]}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
PREFIXES = ['{"s": "a', '{"s": "a", "t": "', '{"s": "a", "t": "b", "u": "']


@pytest.fixture(scope="module")
def compiler(tiny_llm):
    tok = tiny_llm("llama").tokenizer
    return GrammarCompiler(tok), tok


def _control_tokens_allowed(compiler, spec, text: str) -> list[int]:
    gc, tok = compiler
    c = gc.constraint(spec, [tok.eos_token_id])
    m = c._matcher
    assert m.accept_string(text), text
    mask = allocate_bitmask(1, gc.vocab_size)
    m.fill_next_token_bitmask(mask, 0)
    ids = allowed_tokens(mask, gc.vocab_size)[0].nonzero().flatten().tolist()
    assert ids, "the grammar allows something inside the string"
    return [i for i in ids if any(ord(ch) < 0x20 for ch in tok.decode([i]))]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_response_format_strings_refuse_control_characters(compiler, prefix):
    spec = call_spec({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}, None)
    assert _control_tokens_allowed(compiler, spec, prefix) == []


@pytest.mark.parametrize("prefix", PREFIXES)
def test_tool_call_argument_strings_refuse_control_characters(compiler, prefix):
    spec = call_spec(None, TOOLS, "any")
    assert _control_tokens_allowed(compiler, spec, '<tool_call>\n{"name": "f", "arguments": ' + prefix) == []


def test_the_library_alone_would_admit_them(compiler):
    """The reason for budgetllm.constrain.compiler.json_grammar: xgrammar's compile_json_schema
    lets a raw control character into a length-bounded string (if this fails, the workaround can go)."""
    gc, tok = compiler
    m = xgr.GrammarMatcher(gc._compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False))
    assert m.accept_string('{"s": "a\x01')
