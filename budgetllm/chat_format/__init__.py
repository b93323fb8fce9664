"""Chat prompts with tools, and the model's own tool-call syntax parsed back.

Standard library only (no torch, no LangChain). The tokenizer is used only through
``apply_chat_template``, ``chat_template`` and (when it has one) ``parse_response``.

Owns: ``render`` (messages and OpenAI-format tools -> prompt text, the tool-call syntax a model
writes, the forced opening of a call) and ``tool_calls`` (answers -> text, tool calls, invalid
tool calls; the stream splitter that keeps tool-call markup out of text deltas).
Must not import: torch, transformers, LangChain, the engine, the server.
"""

from budgetllm.chat_format.render import (
    PYTHON_TAG,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    format_tool_call_text,
    new_call_id,
    normalize_messages,
    render_messages,
    template_capabilities,
    tool_call_format,
    tool_call_prefix,
    tools_system_prompt,
)
from budgetllm.chat_format.tool_calls import ToolCallStreamSplitter, parse_tool_calls, parse_with_tokenizer

__all__ = [
    "PYTHON_TAG", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "ToolCallStreamSplitter", "format_tool_call_text",
    "new_call_id", "normalize_messages", "parse_tool_calls", "parse_with_tokenizer", "render_messages",
    "template_capabilities", "tool_call_format", "tool_call_prefix", "tools_system_prompt",
]
