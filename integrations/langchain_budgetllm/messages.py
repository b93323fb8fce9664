"""LangChain messages -> the engine's OpenAI-style message dicts (text content, tool calls and results)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)


def text_content(content: Any, role: str) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            kind = block.get("type")
            if kind in ("text", "input_text", "output_text"):
                parts.append(str(block.get("text", "")))
            elif kind in ("reasoning", "thinking", "tool_use", "tool_call", "function_call", "tool_call_chunk"):
                continue  # reasoning is not re-sent; tool calls travel in tool_calls
            else:
                raise ValueError(f"ChatDMS takes text only; a {role} message has a {kind!r} content block")
    return "".join(parts)


def convert_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> the engine's OpenAI-style message dicts."""
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": text_content(m.content, "system")})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": text_content(m.content, "user")})
        elif isinstance(m, AIMessage):
            text = text_content(m.content, "assistant")
            # What the model said in malformed calls (the raw text keeps its markup), so that an
            # error answer to it makes sense on the next turn.
            raw = [c["args"] for c in m.invalid_tool_calls if isinstance(c.get("args"), str) and c["args"]]
            if raw:
                text = "\n".join([text, *raw]) if text else "\n".join(raw)
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if m.tool_calls:
                msg["tool_calls"] = []
                for tc in m.tool_calls:
                    call_names[tc.get("id") or ""] = tc["name"]
                    msg["tool_calls"].append(
                        {"id": tc.get("id") or "", "type": "function", "function": {"name": tc["name"], "arguments": tc["args"]}}
                    )
            out.append(msg)
        elif isinstance(m, ToolMessage):
            content = m.content
            text = content if isinstance(content, str) else _tool_result_text(content)
            if m.status == "error" and not text.lower().startswith("error"):
                text = f"Error: {text}"
            msg = {"role": "tool", "content": text, "tool_call_id": m.tool_call_id}
            name = m.name or call_names.get(m.tool_call_id)
            if name:
                msg["name"] = name
            out.append(msg)
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": text_content(m.content, m.role)})
        else:
            raise ValueError(f"ChatDMS cannot send a message of type {type(m).__name__}")
    return out


def _tool_result_text(content: list) -> str:
    try:
        return text_content(content, "tool")
    except ValueError:
        return json.dumps(content, ensure_ascii=False, default=str)
