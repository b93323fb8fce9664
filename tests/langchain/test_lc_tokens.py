"""ChatDMS's token counting (langchain_budgetllm.tokens) and its model profile (engines.chat_profile),
on a local engine (its tokenizer here) and a remote one (no tokenizer: the server counts)."""

from __future__ import annotations

import pytest
from langchain_budgetllm import ChatDMS
from langchain_budgetllm.engines import chat_profile
from langchain_budgetllm.tokens import format_tools, num_tokens, num_tokens_from_messages, token_ids
from langchain_core.messages import HumanMessage


class WordTokenizer:
    def encode(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return [len(w) for w in text.split()]


class Engine:
    """Counts words; a chat template costs 3 tokens per message and 5 per tool."""

    model_name = "words"

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.calls = []

    def count_tokens(self, messages, tools=None):
        self.calls.append((messages, tools))
        return sum(len(str(m["content"]).split()) + 3 for m in messages) + 5 * len(tools or [])


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_local_counts_use_the_tokenizer():
    engine = Engine(WordTokenizer())
    assert token_ids(engine, "ab cde f") == [2, 3, 1]
    assert num_tokens(engine, "ab cde f") == 3 and engine.calls == []
    chat = ChatDMS.from_llm(engine)
    assert chat.get_token_ids("ab cde") == [2, 3] and chat.get_num_tokens("ab cde") == 2


def test_remote_counts_one_user_turn_less_the_templates_overhead():
    engine = Engine()
    assert num_tokens(engine, "one two three four") == 4  # (4 + 3) - (0 + 3)
    with pytest.raises(NotImplementedError, match="on the server"):
        token_ids(engine, "x")
    chat = ChatDMS.from_llm(engine)
    assert chat.get_num_tokens("a b") == 2
    with pytest.raises(NotImplementedError):
        chat.get_token_ids("a b")


def test_messages_and_tools_go_through_the_template():
    engine = Engine()
    tools = format_tools([add])
    assert tools[0]["type"] == "function" and tools[0]["function"]["name"] == "add"
    n = num_tokens_from_messages(engine, [HumanMessage("a b c")], [add])
    assert n == 3 + 3 + 5
    assert engine.calls[-1] == ([{"role": "user", "content": "a b c"}], tools)
    assert ChatDMS.from_llm(engine).get_num_tokens_from_messages([HumanMessage("a b")]) == 5


def test_profile_leaves_the_context_out_when_the_engine_cannot_load():
    def broken():
        raise RuntimeError("no model")

    profile = chat_profile(32, broken)
    assert profile["max_output_tokens"] == 32 and profile["tool_calling"]
    assert profile.get("max_input_tokens") is None and "max_input_tokens" not in profile
    assert chat_profile(None, lambda: 4096)["max_input_tokens"] == 4096
    assert "max_output_tokens" not in chat_profile(None, lambda: 4096)
