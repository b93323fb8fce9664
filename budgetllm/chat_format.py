"""Chat prompts with tools, and the model's own tool-call syntax parsed back.

Standard library only (no torch, no LangChain). The tokenizer is used only through
``apply_chat_template`` and ``chat_template``.

- ``render_messages``: OpenAI-style messages (and OpenAI-format tools) -> prompt text. The
  tokenizer's chat template renders tools itself when it can (Qwen, Llama 3.1, ...); when it
  cannot (SmolLM2's template ignores ``tools=``), a Hermes/Qwen-style tool description goes into
  the system message, assistant tool calls become ``<tool_call>`` text and tool results become
  ``<tool_response>`` turns.
- ``parse_tool_calls``: generated answer -> (text, tool calls, invalid tool calls). Reads
  Qwen/Hermes ``<tool_call>{json}</tool_call>`` and Llama-3 bare JSON
  (``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``).
- ``ToolCallStreamSplitter``: keeps tool-call markup out of streamed text deltas.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

from budgetllm.types import InvalidToolCall, ToolCall

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


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _loads(text: str) -> Any:
    """json.loads, then a Python-literal fallback (single quotes, True/None), else raise."""
    try:
        return json.loads(text)
    except (ValueError, TypeError) as json_err:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(f"not valid JSON: {json_err}") from None


_NAME_RE = re.compile(r"""["']name["']\s*:\s*["']([^"']+)["']""")


def _guess_name(raw: str) -> str | None:
    m = _NAME_RE.search(raw)
    return m.group(1) if m else None


def _to_call(obj: Any, raw: str) -> ToolCall | InvalidToolCall:
    """One parsed JSON value -> a ToolCall, or an InvalidToolCall saying what is wrong."""
    if not isinstance(obj, dict):
        return InvalidToolCall(new_call_id(), None, raw, f"expected a JSON object, got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):  # OpenAI-shaped call
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return InvalidToolCall(new_call_id(), None, raw, 'the call has no "name" string')
    args: Any = {}
    for key in ("arguments", "parameters", "args"):
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):
        try:
            args = _loads(args) if args.strip() else {}
        except ValueError as e:
            return InvalidToolCall(new_call_id(), name, raw, f"arguments of {name!r}: {e}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return InvalidToolCall(new_call_id(), name, raw, f"arguments of {name!r} must be a JSON object, got {type(args).__name__}")
    try:  # the Python-literal fallback can yield sets, bytes, ...
        args = json.loads(json.dumps(args))
    except (TypeError, ValueError) as e:
        return InvalidToolCall(new_call_id(), name, raw, f"arguments of {name!r} are not JSON values: {e}")
    return ToolCall(new_call_id(), name, args)


def _strip_fence(body: str) -> str:
    body = body.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        if body.rstrip().endswith("```"):
            body = body.rstrip()[:-3]
    return body.strip()


def _parse_body(body: str, raw: str) -> list[ToolCall | InvalidToolCall]:
    body = _strip_fence(body)
    if not body:
        return [InvalidToolCall(new_call_id(), None, raw, "empty tool call")]
    try:
        value = _loads(body)
    except ValueError as e:
        return [InvalidToolCall(new_call_id(), _guess_name(body), raw, str(e))]
    if isinstance(value, list) and value:
        return [_to_call(v, raw) for v in value]
    return [_to_call(value, raw)]


def _unparsable(body: str) -> bool:
    try:
        _loads(_strip_fence(body))
    except ValueError:
        return True
    return False


def _split(calls: list[ToolCall | InvalidToolCall]) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    good = [c for c in calls if isinstance(c, ToolCall)]
    bad = [c for c in calls if isinstance(c, InvalidToolCall)]
    return good, bad


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split a generated answer into its text and its tool calls.

    Hermes/Qwen: every ``<tool_call>{json}</tool_call>`` block is a call; a last block without
    its closing tag is accepted when its JSON is complete, and is an invalid (truncated) call
    otherwise. Llama 3: the whole answer is ``{"name": ..., "parameters"|"arguments": {...}}``
    (optionally after ``<|python_tag|>``, which may hold several calls separated by ``;``).
    Invalid calls keep the raw text (with its markup) and an error.
    """
    if TOOL_CALL_OPEN in text:
        calls: list[ToolCall | InvalidToolCall] = []
        kept: list[str] = []
        pos = 0
        while True:
            start = text.find(TOOL_CALL_OPEN, pos)
            if start < 0:
                kept.append(text[pos:])
                break
            kept.append(text[pos:start])
            body_start = start + len(TOOL_CALL_OPEN)
            end = text.find(TOOL_CALL_CLOSE, body_start)
            if end < 0:
                raw = text[start:]
                body = text[body_start:]
                parsed = _parse_body(body, raw)
                if any(isinstance(c, InvalidToolCall) for c in parsed) or not body.strip():
                    name = _guess_name(body)
                    parsed = [InvalidToolCall(new_call_id(), name, raw, "truncated tool call: no closing </tool_call>")]
                calls.extend(parsed)
                break
            # "</tool_call>" inside a JSON string does not close the call: take the first closing
            # tag after which the body parses (else the first one, and the call is invalid).
            close = end
            while _unparsable(text[body_start:close]):
                later = text.find(TOOL_CALL_CLOSE, close + len(TOOL_CALL_CLOSE))
                if later < 0:
                    break
                close = later
            if not _unparsable(text[body_start:close]):
                end = close
            raw = text[start : end + len(TOOL_CALL_CLOSE)]
            calls.extend(_parse_body(text[body_start:end], raw))
            pos = end + len(TOOL_CALL_CLOSE)
        rest = "".join(kept)
        rest = re.sub(r"\n{3,}", "\n\n", rest).strip()
        good, bad = _split(calls)
        return rest, good, bad

    stripped = text.strip()
    if stripped.startswith(PYTHON_TAG):
        body = stripped[len(PYTHON_TAG) :].strip()
        pieces = [p for p in _split_top_level(body, ";") if p.strip()] or [body]
        calls = []
        for p in pieces:
            calls.extend(_parse_body(p, PYTHON_TAG + p))
        good, bad = _split(calls)
        return "", good, bad

    body = _strip_fence(stripped) if stripped.startswith("```") else stripped
    if body.startswith("{") and body.endswith("}") and _NAME_RE.search(body):
        try:
            value = _loads(body)
        except ValueError:
            return text, [], []
        if isinstance(value, dict) and isinstance(value.get("name"), str) and (
            "parameters" in value or "arguments" in value
        ):
            call = _to_call(value, body)
            if isinstance(call, ToolCall):
                return "", [call], []
    return text, [], []


def parse_with_tokenizer(tokenizer: Any, text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]] | None:
    """The model's own parser (transformers >= 5: ``tokenizer.parse_response`` with the tokenizer's
    ``response_template``), when the tokenizer has one; None otherwise (use ``parse_tool_calls``)."""
    if getattr(tokenizer, "response_template", None) is None or not hasattr(tokenizer, "parse_response"):
        return None
    try:
        msg = tokenizer.parse_response(text)
    except Exception:  # a template that does not match this answer: our parser decides
        return None
    if not isinstance(msg, dict):
        return None
    calls = [_to_call(tc, json.dumps(tc, ensure_ascii=False, default=str)) for tc in msg.get("tool_calls") or []]
    good, bad = _split(calls)
    return _text_of(msg.get("content")), good, bad


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside JSON strings and brackets."""
    parts, depth, in_str, esc, cur = [], 0, False, False, []
    for ch in text:
        if in_str:
            esc = (ch == "\\") and not esc
            if ch == '"' and not esc:
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


class ToolCallStreamSplitter:
    """Passes text deltas through until tool-call markup starts, then holds everything.

    ``feed(delta)`` returns ``[("text", piece), ...]``; anything from ``<tool_call>`` on is held,
    and so are a tail that may still become ``<tool_call>`` (e.g. ``"<tool_"``) and trailing
    whitespace (released with the next text, or by ``finish()``). With
    ``bare_json`` the answer is also held while it starts like a Llama-3 JSON call (``{`` or
    ``<|python_tag|>``). ``finish()`` returns the held text; parse the whole answer with
    ``parse_tool_calls``.
    """

    def __init__(self, bare_json: bool = True):
        self.bare_json = bare_json
        self._held = ""
        self._emitted = False  # some non-blank text went out
        self._locked = False  # markup seen: hold everything from now on
        self._deltas = None  # budgetllm.tool_stream.ToolCallDeltas over the held markup

    def feed(self, delta: str) -> list[tuple[str, str]]:
        if not delta:
            return []
        self._held += delta
        if self._locked:
            return []
        if not self._emitted and self.bare_json:
            head = self._held.lstrip()
            if not head:
                return []
            if head.startswith("{") or head.startswith(PYTHON_TAG) or PYTHON_TAG.startswith(head):
                if head.startswith("{") or head.startswith(PYTHON_TAG):
                    self._locked = True
                return []
        i = self._held.find(TOOL_CALL_OPEN)
        if i >= 0:
            out = self._held[:i].rstrip()
            self._held = self._held[len(out) :]
            self._locked = True
            return self._emit(out)
        keep = _partial_suffix(self._held, TOOL_CALL_OPEN)
        out = self._held[: len(self._held) - keep]
        # Trailing whitespace waits for more text: before a tool call it is dropped from the answer.
        out_visible = out.rstrip()
        self._held = out[len(out_visible) :] + self._held[len(self._held) - keep :]
        return self._emit(out_visible)

    def _emit(self, text: str) -> list[tuple[str, str]]:
        if not text:
            return []
        if text.strip():
            self._emitted = True
        return [("text", text)]

    def finish(self) -> str:
        held, self._held = self._held, ""
        return held

    def deltas(self) -> list:
        """New pieces of the calls held so far (``budgetllm.tool_stream.CallDelta``: a call's name
        and id first, then its argument text as it is written); call after ``feed``."""
        if not self._locked or not self._held:
            return []
        if self._deltas is None:
            from budgetllm.tool_stream import ToolCallDeltas

            self._deltas = ToolCallDeltas()
        return self._deltas.update(self._held)

    def streamed(self) -> list[tuple[str, str]]:
        """(id, name) of each call that streamed, in order."""
        return [(c.id, c.name) for c in self._deltas.calls if c.name is not None] if self._deltas else []

    @property
    def holding_markup(self) -> bool:
        return self._locked


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
