"""The model's own tool-call syntax read back: whole answers and streamed text deltas.

- ``parse_tool_calls``: generated answer -> (text, tool calls, invalid tool calls). Reads
  Qwen/Hermes ``<tool_call>{json}</tool_call>`` and Llama-3 bare JSON
  (``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``).
- ``parse_with_tokenizer``: the tokenizer's own parser, when it has one.
- ``ToolCallStreamSplitter``: keeps tool-call markup out of streamed text deltas.
Standard library only. Prompts (messages and tools -> text) are ``budgetllm.chat_prompt``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from budgetllm.chat_prompt import PYTHON_TAG, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, _loads, _text_of, new_call_id
from budgetllm.types import InvalidToolCall, ToolCall

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
