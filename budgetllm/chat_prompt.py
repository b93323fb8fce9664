"""Chat prompts with tools: OpenAI-style messages (and OpenAI-format tools) -> prompt text.

The tokenizer's chat template renders tools itself when it can (Qwen, Llama 3.1, ...); when it
cannot (SmolLM2's template ignores ``tools=``), a Hermes/Qwen-style tool description goes into the
system message, assistant tool calls become ``<tool_call>`` text and tool results become
``<tool_response>`` turns. Also: which tool-call syntax a tokenizer's model writes, and the forced
opening of a call for ``tool_choice``. Standard library only. Reading the calls back is
``budgetllm.chat_format``.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"

_TOOLS_PROMPT = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    "</tool_call>"
)

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "zq_probe_tool",
        "description": "zq probe description",
        "parameters": {"type": "object", "properties": {"zq_arg": {"type": "string"}}},
    },
}

# chat_template text -> {"tools": bool, "tool_calls": bool, "tool_role": bool}
_CAPABILITIES: dict[str, dict[str, bool]] = {}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """Message content (None, str, or a list of OpenAI/LangChain content parts) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return json.dumps(content, ensure_ascii=False) if isinstance(content, dict) else str(content)


def _loads(text: str) -> Any:
    """json.loads, then a Python-literal fallback (single quotes, True/None), else raise."""
    try:
        return json.loads(text)
    except (ValueError, TypeError) as json_err:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(f"not valid JSON: {json_err}") from None


def _arguments_dict(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            value = _loads(arguments)
        except ValueError:  # an earlier, truncated call (agents send them back): shown as written
            return {"value": arguments}
        if isinstance(value, dict):
            return value
    return {"value": arguments}


def normalize_messages(messages: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the messages with text content, dict arguments and typed tool calls."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = []
    for m in messages:
        msg = dict(m)
        msg["content"] = _text_of(msg.get("content"))
        if msg.get("tool_calls"):
            calls = []
            for tc in msg["tool_calls"]:
                fn = tc.get("function", tc)
                calls.append(
                    {
                        "id": tc.get("id") or new_call_id(),
                        "type": "function",
                        "function": {"name": fn.get("name", ""), "arguments": _arguments_dict(fn.get("arguments", fn.get("args")))},
                    }
                )
            msg["tool_calls"] = calls
        else:
            msg.pop("tool_calls", None)
        out.append(msg)
    return out


def _apply(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None, add_generation_prompt: bool) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    text = tokenizer.apply_chat_template(messages, **kwargs)
    if not isinstance(text, str):  # some versions return a list for one conversation
        text = text[0] if isinstance(text, list) and text and isinstance(text[0], str) else str(text)
    return text


def template_capabilities(tokenizer: Any) -> dict[str, bool]:
    """What the tokenizer's chat template does with tools, probed once per template.

    tools: it renders ``tools=`` (the rendering changes when a tool is passed);
    tool_calls: it renders an assistant message's ``tool_calls``;
    tool_role: it handles the ``tool`` role on purpose (the template text names it).
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return {"tools": False, "tool_calls": False, "tool_role": False}
    if template in _CAPABILITIES:
        return _CAPABILITIES[template]
    caps = {"tools": False, "tool_calls": False, "tool_role": False}
    probe = [{"role": "user", "content": "zq hello"}]
    try:
        plain = _apply(tokenizer, probe, None, True)
        with_tool = _apply(tokenizer, probe, [_PROBE_TOOL], True)
        caps["tools"] = with_tool != plain and "zq_probe_tool" in with_tool
    except Exception:
        caps["tools"] = False
    try:
        call = {"id": "call_zq", "type": "function", "function": {"name": "zq_called_tool", "arguments": {"zq_arg": "v"}}}
        conv = probe + [{"role": "assistant", "content": "", "tool_calls": [call]}]
        caps["tool_calls"] = "zq_called_tool" in _apply(tokenizer, conv, None, False)
    except Exception:
        caps["tool_calls"] = False
    caps["tool_role"] = bool(re.search(r"""['"]tool['"]""", template))
    _CAPABILITIES[template] = caps
    return caps


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """The Hermes/Qwen-style description of ``tools`` (OpenAI format) for templates without tools."""
    lines = "\n".join(json.dumps(_openai_tool(t), ensure_ascii=False) for t in tools)
    return _TOOLS_PROMPT.format(tools=lines)


def _openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") == "function" and "function" in tool:
        return tool
    return {"type": "function", "function": tool}


def format_tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def _fallback_messages(messages: list[dict[str, Any]], tools: list[dict] | None, caps: dict[str, bool]) -> list[dict[str, Any]]:
    """Messages rewritten so a template that knows nothing of tools still shows them."""
    out: list[dict[str, Any]] = []
    if tools:
        desc = tools_system_prompt(tools)
        if messages and messages[0]["role"] == "system":
            first = dict(messages[0])
            first["content"] = (first["content"] + "\n\n" + desc) if first["content"] else desc
            messages = [first] + messages[1:]
        else:
            messages = [{"role": "system", "content": desc}] + messages
    for m in messages:
        role = m["role"]
        if role == "assistant" and m.get("tool_calls") and not caps["tool_calls"]:
            calls = [format_tool_call_text(tc["function"]["name"], tc["function"]["arguments"]) for tc in m["tool_calls"]]
            text = "\n".join(([m["content"]] if m["content"] else []) + calls)
            out.append({"role": "assistant", "content": text})
        elif role == "tool" and not caps["tool_role"]:
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            prev = out[-1] if out else None
            if prev is not None and prev.get("_tool_turn"):
                prev["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_turn": True})
        else:
            out.append(m)
    for m in out:
        m.pop("_tool_turn", None)
    return out


def _chatml(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render_messages(
    tokenizer: Any,
    messages: str | list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` (OpenAI-style dicts) and ``tools`` (OpenAI format)."""
    msgs = normalize_messages(messages)
    tools = [_openai_tool(t) for t in tools] if tools else None
    caps = template_capabilities(tokenizer)
    native_tools = bool(tools) and caps["tools"]
    has_tool_history = any(m["role"] == "tool" or m.get("tool_calls") for m in msgs)
    if native_tools or (not tools and caps["tools"] and has_tool_history):
        rendered = msgs
        if not caps["tool_calls"] or not caps["tool_role"]:
            rendered = _fallback_messages(msgs, None, caps)
        call_tools = tools if native_tools else None
    else:
        rendered = _fallback_messages(msgs, tools, caps)
        call_tools = None
    if getattr(tokenizer, "chat_template", None) is None:
        return _chatml(rendered, add_generation_prompt)
    try:
        return _apply(tokenizer, rendered, call_tools, add_generation_prompt)
    except Exception:
        # Templates that refuse a system role or tool turns: fold the system text into the
        # first user turn and send tool results as user turns.
        caps_strict = {"tools": False, "tool_calls": False, "tool_role": False}
        folded = _fallback_messages(msgs, tools, caps_strict)
        if folded and folded[0]["role"] == "system":
            sys_text = folded.pop(0)["content"]
            if folded and folded[0]["role"] == "user":
                folded[0] = {**folded[0], "content": sys_text + "\n\n" + folded[0]["content"]}
            else:
                folded.insert(0, {"role": "user", "content": sys_text})
        return _apply(tokenizer, folded, None, add_generation_prompt)


def tool_call_format(tokenizer: Any) -> str:
    """The tool-call syntax the model writes: "llama3" (bare ``{"name": ..., "parameters": ...}``)
    when its template renders tools without ``<tool_call>`` and asks for a "parameters" JSON,
    else "hermes" (``<tool_call>{json}</tool_call>``: Qwen's own, and our fallback prompt's)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or TOOL_CALL_OPEN in template or not template_capabilities(tokenizer)["tools"]:
        return "hermes"
    return "llama3" if '"parameters"' in template or PYTHON_TAG in template else "hermes"


def tool_call_prefix(tool_choice: Any, tools: list[dict[str, Any]] | None) -> str | None:
    """Answer prefix that forces a tool call for ``tool_choice``, or None when nothing is forced.

    "any"/"required" (or True) forces some call; a tool name (or {"type": "function",
    "function": {"name": ...}}) forces that tool. An engine that prefills this text after the
    generation prompt (and thinking) must prepend it to the generated answer before
    ``parse_tool_calls``.
    """
    if not tools or tool_choice in (None, "auto", "none", False):
        return None
    names = [_openai_tool(t)["function"].get("name") for t in tools]
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if tool_choice in ("any", "required", True):
        if len(names) == 1:
            tool_choice = names[0]
        else:
            return f'{TOOL_CALL_OPEN}\n{{"name": "'
    if isinstance(tool_choice, str) and tool_choice in names:
        return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(tool_choice)}, "arguments": '
    return None
