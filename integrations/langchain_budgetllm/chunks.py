"""budgetllm StreamEvents -> LangChain ChatGenerationChunks, and the message they add up to.

One running block index across reasoning, text and tool-call blocks (LangChain's v1 content
blocks need it); a tool call streams as ``tool_call_chunks`` while it is written (name first,
then argument text), and a call that did not stream comes whole after all text; the last chunk
carries usage (reasoning inside ``output_tokens``), the KV-memory record, the budget plan and
timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from budgetllm import Generation, InvalidToolCall, StreamEvent, ToolCall, Usage

PROVIDER = "dms"


class ChunkBuilder:
    """Turns one call's StreamEvents into ChatGenerationChunks; ``generation`` is the final result."""

    def __init__(self, model_name: str, decision: dict[str, Any] | None = None):
        self.model_name = model_name
        self.decision = decision  # a plan made outside the engine (BudgetMiddleware's)
        self.index = -1
        self.block = ""
        self.text = ""
        self.reasoning = ""
        self.calls: list[ToolCall | InvalidToolCall] = []
        self.generation: Generation | None = None
        self.streamed: dict[int, int] = {}  # engine call index -> chunk index of a call streamed in pieces
        self.streamed_ids: set[str] = set()

    def _bump(self, block: str) -> None:
        if block != self.block:
            self.block = block
            self.index += 1

    def _reasoning(self, delta: str) -> ChatGenerationChunk:
        self._bump("reasoning")
        self.reasoning += delta
        return ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": delta}))

    def _text(self, delta: str) -> ChatGenerationChunk:
        self._bump("text")
        self.text += delta
        return ChatGenerationChunk(message=AIMessageChunk(content=delta))

    def _tool_piece(self, d: Any) -> ChatGenerationChunk:
        """A piece of a call being written: its name and id first, then argument text (LangChain
        concatenates the ``args`` of chunks with one ``index``)."""
        if d.index not in self.streamed:
            self.index += 1
            self.block = "tool_call_chunk"
            self.streamed[d.index] = self.index
            self.streamed_ids.add(d.id)
        chunk = tool_call_chunk(name=d.name, args=d.args, id=d.id, index=self.streamed[d.index])
        return ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))

    def on_event(self, event: StreamEvent) -> Iterator[ChatGenerationChunk]:
        kind = event.kind
        if kind == "reasoning" and event.text:
            yield self._reasoning(event.text)
        elif kind == "text" and event.text:
            yield self._text(event.text)
        elif kind == "tool_call_delta" and event.tool_delta is not None:
            yield self._tool_piece(event.tool_delta)
        elif kind == "tool_call" and event.tool_call is not None:
            self.calls.append(event.tool_call)
        elif kind == "done":
            yield from self._finish(event.generation)

    def _finish(self, gen: Generation | None) -> Iterator[ChatGenerationChunk]:
        self.generation = gen
        if gen is None:
            yield ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last"))
            return
        # Text the engine finalised without streaming it (e.g. text after a tool call).
        if gen.reasoning and not self.text and gen.reasoning.startswith(self.reasoning) and gen.reasoning != self.reasoning:
            yield self._reasoning(gen.reasoning[len(self.reasoning):])
        if gen.text and gen.text.startswith(self.text) and gen.text != self.text:
            yield self._text(gen.text[len(self.text):])
        calls = self.calls or [*gen.tool_calls, *gen.invalid_tool_calls]
        for call in calls:
            if call.id in self.streamed_ids:  # its pieces went out while it was written
                continue
            self.index += 1
            self.block = "tool_call_chunk"
            # An invalid call's raw text keeps its markup, so it never parses as arguments.
            args = json.dumps(call.arguments, ensure_ascii=False) if isinstance(call, ToolCall) else call.raw
            chunk = tool_call_chunk(name=call.name, args=args, id=call.id, index=self.index)
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
        valid = any(isinstance(c, ToolCall) for c in calls)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last", usage_metadata=usage_metadata(gen.usage),
            response_metadata=response_metadata(gen, self.model_name, valid, self.decision)))

    def message(self, chunks: list[ChatGenerationChunk]) -> AIMessage:
        """The aggregated message; tool calls come from the engine's Generation (errors kept)."""
        if not chunks:
            chunks = [ChatGenerationChunk(message=AIMessageChunk(content=""))]
        merged = chunks[0].message
        for c in chunks[1:]:
            merged = merged + c.message
        gen = self.generation
        calls = [tool_call(name=c.name, args=c.arguments, id=c.id) for c in gen.tool_calls] if gen else merged.tool_calls
        invalid = ([invalid_tool_call(name=c.name, args=c.raw, id=c.id, error=c.error) for c in gen.invalid_tool_calls]
                   if gen else merged.invalid_tool_calls)
        return AIMessage(content=merged.content, additional_kwargs=merged.additional_kwargs,
                         response_metadata=merged.response_metadata, usage_metadata=merged.usage_metadata,
                         id=merged.id, tool_calls=calls, invalid_tool_calls=invalid)


def usage_metadata(usage: Usage) -> dict[str, Any]:
    """LangChain usage: reasoning inside output_tokens; prompt tokens served from a reused
    compressed cache as input_token_details["cache_read"]."""
    inp, out = int(usage.input_tokens), int(usage.output_tokens)
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out,
            "output_token_details": {"reasoning": int(usage.reasoning_tokens)},
            "input_token_details": {"cache_read": int(usage.cached_tokens)}}


def as_dict(record: Any) -> dict[str, Any]:
    """A record (dataclass, mapping, or an object with ``to_dict``) as a plain dict; None -> {}."""
    if record is None:
        return {}
    if isinstance(record, Mapping):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return asdict(record) if is_dataclass(record) else dict(vars(record))


def response_metadata(gen: Generation, default_name: str, has_calls: bool,
                      decision: dict[str, Any] | None = None) -> dict[str, Any]:
    """model_name, provider, finish_reason, kv_memory, budget_plan and timing of one call.

    ``decision``: a plan made outside the engine (BudgetMiddleware's); it becomes budget_plan,
    with the engine's own plan under budget_plan["engine_plan"]. finish_reason is "tool_calls"
    only when a valid call was made.
    """
    usage = gen.usage
    finish = gen.finish_reason
    if has_calls and finish == "stop":
        finish = "tool_calls"
    elif not has_calls and finish == "tool_calls":
        finish = "stop"
    return {
        "model_name": gen.model or default_name,
        "model_provider": PROVIDER,
        "finish_reason": finish,
        "kv_memory": as_dict(usage.kv),
        "budget_plan": {**decision, "engine_plan": as_dict(usage.plan)} if decision else as_dict(usage.plan),
        "timing": {"prefill_seconds": float(usage.prefill_seconds), "decode_seconds": float(usage.decode_seconds)},
    }
