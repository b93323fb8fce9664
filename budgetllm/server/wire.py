"""The OpenAI chat-completions wire format <-> budgetllm records, shared by server and client.

Standard library only, so that ``budgetllm.server.client`` needs neither torch nor FastAPI.

The wire is OpenAI's, plus a few extensions that OpenAI clients ignore (they keep unknown fields):
- ``message.reasoning_content`` (and ``delta.reasoning_content``): the thinking text, the name
  llama.cpp, DeepSeek and LangChain's ``additional_kwargs`` use.
- ``message.invalid_tool_calls``: tool calls the model wrote but that did not parse. OpenAI's format
  has no place for them, and putting unparseable JSON into ``tool_calls`` would break clients.
- ``usage.completion_tokens_details.reasoning_tokens`` (OpenAI's own name), ``usage.kv_memory``
  (a ``KVMemory`` as a dict), ``usage.plan`` (the budget plan applied), prefill/decode seconds.
- ``prompt_token_ids`` / ``token_ids`` on the choice, only when the request asks
  ``return_token_ids`` (RemoteLLM does, so that remote Generations equal local ones).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any

from budgetllm.tool_stream import CallDelta
from budgetllm.types import Generation, InvalidToolCall, KVMemory, Plan, StreamEvent, ToolCall, Usage

_KV_FIELDS = {f.name for f in fields(KVMemory)}


def json_safe(value: Any) -> Any:
    """Plans may hold floats like inf or objects; JSON must not (strict parsers reject NaN/inf)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------
# Usage
# --------------------------------------------------------------------------------------------


def usage_to_wire(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},  # reused compressed cache
        "kv_memory": json_safe(usage.kv.to_dict()),
        "plan": json_safe(usage.plan.to_dict()) if usage.plan is not None else None,
        "prefill_seconds": usage.prefill_seconds,
        "decode_seconds": usage.decode_seconds,
    }


def usage_from_wire(d: dict[str, Any] | None) -> Usage:
    d = d or {}
    kv = {k: v for k, v in (d.get("kv_memory") or {}).items() if k in _KV_FIELDS}
    details = d.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(d.get("prompt_tokens") or 0),
        output_tokens=int(d.get("completion_tokens") or 0),
        reasoning_tokens=int(details.get("reasoning_tokens") or 0),
        cached_tokens=int((d.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        kv=KVMemory(**kv),
        prefill_seconds=float(d.get("prefill_seconds") or 0.0),
        decode_seconds=float(d.get("decode_seconds") or 0.0),
        plan=Plan.from_dict(d["plan"]) if d.get("plan") else None,
    )


# --------------------------------------------------------------------------------------------
# Tool calls
# --------------------------------------------------------------------------------------------


def tool_call_to_wire(tc: ToolCall, index: int | None = None) -> dict[str, Any]:
    # OpenAI sends arguments as a JSON *string*; clients json.loads it themselves.
    d: dict[str, Any] = {
        "id": tc.id,
        "type": "function",
        "function": {"name": tc.name, "arguments": json.dumps(tc.arguments, ensure_ascii=False)},
    }
    if index is not None:
        d = {"index": index, **d}
    return d


def invalid_tool_call_to_wire(tc: InvalidToolCall) -> dict[str, Any]:
    return {"id": tc.id, "name": tc.name, "raw": tc.raw, "error": tc.error}


def tool_call_from_wire(d: dict[str, Any]) -> ToolCall | InvalidToolCall:
    fn = d.get("function") or {}
    raw = fn.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        return InvalidToolCall(id=d.get("id", ""), name=fn.get("name"), raw=raw, error=str(e))
    if not isinstance(args, dict):
        return InvalidToolCall(d.get("id", ""), fn.get("name"), str(raw), "arguments are not a JSON object")
    return ToolCall(id=d.get("id", ""), name=fn.get("name", ""), arguments=args)


def invalid_tool_call_from_wire(d: dict[str, Any]) -> InvalidToolCall:
    return InvalidToolCall(id=d.get("id", ""), name=d.get("name"), raw=d.get("raw", ""), error=d.get("error", ""))


# --------------------------------------------------------------------------------------------
# Whole responses
# --------------------------------------------------------------------------------------------


def response_from_generation(
    gen: Generation, *, id: str, created: int, model: str, token_ids: bool = False
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content for a pure tool-call turn; clients test for None.
        "content": gen.text if (gen.text or not gen.tool_calls) else None,
        "reasoning_content": gen.reasoning or None,
    }
    if gen.tool_calls:
        message["tool_calls"] = [tool_call_to_wire(tc) for tc in gen.tool_calls]
    if gen.invalid_tool_calls:
        message["invalid_tool_calls"] = [invalid_tool_call_to_wire(tc) for tc in gen.invalid_tool_calls]
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": gen.finish_reason, "logprobs": None}
    if token_ids:
        choice["prompt_token_ids"] = list(gen.prompt_token_ids)
        choice["token_ids"] = list(gen.token_ids)
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": gen.model or model,
        "choices": [choice],
        "usage": usage_to_wire(gen.usage),
    }


def generation_from_response(d: dict[str, Any]) -> Generation:
    choice = (d.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    calls = [tool_call_from_wire(t) for t in msg.get("tool_calls") or []]
    invalid = [invalid_tool_call_from_wire(t) for t in msg.get("invalid_tool_calls") or []]
    return Generation(
        text=msg.get("content") or "",
        reasoning=msg.get("reasoning_content") or "",
        finish_reason=choice.get("finish_reason") or "stop",
        usage=usage_from_wire(d.get("usage")),
        prompt_token_ids=list(choice.get("prompt_token_ids") or []),
        token_ids=list(choice.get("token_ids") or []),
        tool_calls=[c for c in calls if isinstance(c, ToolCall)],
        invalid_tool_calls=invalid + [c for c in calls if isinstance(c, InvalidToolCall)],
        model=d.get("model") or "",
    )


# --------------------------------------------------------------------------------------------
# Streaming chunks
# --------------------------------------------------------------------------------------------


def chunk(
    *, id: str, created: int, model: str, delta: dict[str, Any] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}],
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; ``data: [DONE]`` ends an OpenAI stream."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class StreamAssembler:
    """Client side: chunks -> StreamEvents, and the final Generation rebuilt from them.

    The text of the final Generation is the concatenation of the deltas (the server streams every
    piece of text it returns), so no answer is sent twice.
    """

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self._pieces: dict[int, dict[str, Any]] = {}  # streamed tool calls by index, accumulated
        self.invalid: list[InvalidToolCall] = []
        self.finish_reason = "stop"
        self.model = ""
        self.usage: Usage | None = None
        self.prompt_token_ids: list[int] = []
        self.token_ids: list[int] = []

    def feed(self, d: dict[str, Any]) -> list[StreamEvent]:
        self.model = d.get("model") or self.model
        if d.get("usage"):
            self.usage = usage_from_wire(d["usage"])
        out: list[StreamEvent] = []
        for choice in d.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                self.reasoning.append(delta["reasoning_content"])
                out.append(StreamEvent("reasoning", text=delta["reasoning_content"]))
            if delta.get("content"):
                self.text.append(delta["content"])
                out.append(StreamEvent("text", text=delta["content"]))
            for t in delta.get("tool_calls") or []:
                out += self._tool_piece(t)
            for t in delta.get("invalid_tool_calls") or []:
                tc = invalid_tool_call_from_wire(t)
                self.invalid.append(tc)
                out.append(StreamEvent("tool_call", tool_call=tc))
            if choice.get("finish_reason"):
                out += self._streamed_calls()
                self.finish_reason = choice["finish_reason"]
            self.prompt_token_ids = choice.get("prompt_token_ids") or self.prompt_token_ids
            self.token_ids = choice.get("token_ids") or self.token_ids
        return out

    def _tool_piece(self, t: dict[str, Any]) -> list[StreamEvent]:
        """One ``delta.tool_calls`` item: a whole call (its arguments complete: a "tool_call" event
        now), or a piece of the call of its index, as OpenAI streams them (id and name first, then
        argument text: a "tool_call_delta" event; the call is parsed when the choice finishes)."""
        i = t.get("index", len(self._pieces))
        fn = t.get("function") or {}
        args = fn.get("arguments")
        if i not in self._pieces and _whole(args):
            self._pieces[i] = None  # done
            tc = tool_call_from_wire(t)
            (self.tool_calls if isinstance(tc, ToolCall) else self.invalid).append(tc)
            return [StreamEvent("tool_call", tool_call=tc)]
        first = self._pieces.get(i) is None
        acc = self._pieces.get(i) or {"id": t.get("id", ""), "function": {"name": fn.get("name") or "", "arguments": ""}}
        self._pieces[i] = acc
        piece = args if isinstance(args, str) else ""
        acc["function"]["arguments"] += piece
        return [StreamEvent("tool_call_delta", tool_delta=CallDelta(
            i, piece, acc["function"]["name"] if first else None, acc["id"] if first else None))]

    def _streamed_calls(self) -> list[StreamEvent]:
        """The calls that came in pieces, parsed (the engine's order: after the text, before the
        end). With an invalid call in the answer the server sent every valid call whole instead."""
        acc = [self._pieces[i] for i in sorted(self._pieces) if self._pieces[i] is not None]
        self._pieces.clear()
        if self.invalid:
            return []
        calls = [tool_call_from_wire(d) for d in acc]
        for tc in calls:
            (self.tool_calls if isinstance(tc, ToolCall) else self.invalid).append(tc)
        return [StreamEvent("tool_call", tool_call=tc) for tc in calls]

    def done(self) -> StreamEvent:
        self._streamed_calls()  # a stream without a finish_reason: its calls still count
        gen = Generation(
            text="".join(self.text),
            reasoning="".join(self.reasoning),
            finish_reason=self.finish_reason,  # type: ignore[arg-type]
            usage=self.usage or Usage(),
            prompt_token_ids=list(self.prompt_token_ids),
            token_ids=list(self.token_ids),
            tool_calls=self.tool_calls,
            invalid_tool_calls=self.invalid,
            model=self.model,
        )
        return StreamEvent("done", generation=gen)


def _whole(args: Any) -> bool:
    """Arguments that are a complete JSON object (a call sent in one piece)."""
    if isinstance(args, dict):
        return True
    if not isinstance(args, str) or not args.strip():
        return False
    try:
        return isinstance(json.loads(args), dict)
    except json.JSONDecodeError:
        return False
