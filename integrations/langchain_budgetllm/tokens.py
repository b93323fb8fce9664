"""Token counting for ChatDMS: through the engine's tokenizer and chat template.

A local engine (``budgetllm.LLM``) has its tokenizer here; a remote one (``budgetllm.RemoteLLM``)
has none, and counts on the server (``count_tokens``), so text alone is counted as one user turn
less the template's overhead. Tools are formatted as OpenAI tools, as ``bind_tools`` sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_budgetllm.messages import convert_messages

ToolLike = dict[str, Any] | type | Callable | BaseTool


def format_tools(tools: Sequence[ToolLike]) -> list[dict[str, Any]]:
    """Tools as the engine takes them (OpenAI tool dicts)."""
    return [convert_to_openai_tool(t) for t in tools]


def num_tokens_from_messages(llm: Any, messages: list[BaseMessage], tools: Sequence[ToolLike] | None = None) -> int:
    """Prompt tokens of ``messages`` (and ``tools``) through the model's chat template."""
    formatted = format_tools(tools) if tools else None
    return int(llm.count_tokens(convert_messages(convert_to_messages(messages)), tools=formatted))


def token_ids(llm: Any, text: str) -> list[int]:
    """Token ids from the model's tokenizer (a remote engine has none: use num_tokens)."""
    if llm.tokenizer is None:
        raise NotImplementedError("the tokenizer is on the server; use get_num_tokens / get_num_tokens_from_messages")
    return list(llm.tokenizer.encode(text, add_special_tokens=False))


def num_tokens(llm: Any, text: str) -> int:
    """Tokens of ``text``: the tokenizer's count, or (remote) one user turn less an empty one."""
    if llm.tokenizer is not None:
        return len(llm.tokenizer.encode(text, add_special_tokens=False))
    full = llm.count_tokens([{"role": "user", "content": text}])
    return max(0, int(full) - int(llm.count_tokens([{"role": "user", "content": ""}])))
