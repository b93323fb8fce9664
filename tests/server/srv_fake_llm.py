"""FakeLLM: a TEST DOUBLE with LLM's surface, so the HTTP layer is tested without a model.

Deterministic: the same call gives the same Generation, which lets tests compare a remote call
(RemoteLLM through the server) with the local one field by field. Not shipped with the package.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from budgetllm.errors import InvalidRequestError, PoolExhaustedError, PromptTooLongError
from budgetllm.options import CallOptions
from budgetllm.policy.base import ModelProfile
from budgetllm.types import Generation, InvalidToolCall, KVMemory, Plan, StreamEvent, ToolCall, Usage


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class FakeLLM:
    """Echoes the last user message. Magic words in it: "weather" -> a tool call, "broken" -> an
    invalid tool call, "explode" -> an unexpected exception, "full" -> PoolExhaustedError,
    "crash" -> an exception after the first streamed delta.

    delay: seconds between streamed events (a slow stream, for disconnect tests).
    """

    model_name = "fake-model"
    max_context = 64

    def __init__(self, delay: float = 0.0, pieces: int = 3):
        self.delay, self.pieces = delay, pieces
        self.calls: list[dict[str, Any]] = []
        self.cancelled = 0
        self.finished = 0
        self.active = 0
        self.tokens_generated = 0
        self._lock = threading.Lock()

    @property
    def profile(self) -> ModelProfile:
        return ModelProfile(name=self.model_name, kv_bytes_per_token=256, window=16, native_compression=8.0,
                            max_context=self.max_context)

    def count_tokens(self, messages: Any, tools: list[dict] | None = None) -> int:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        words = sum(len(_text(m.get("content")).split()) + 2 for m in messages)
        return words + 10 * len(tools or [])

    def pool_stats(self) -> dict:
        return {"pages_total": 100, "pages_free": 100 - 10 * self.active, "pages_used": 10 * self.active,
                "active": self.active, "queued": 0, "tokens_generated": self.tokens_generated,
                "compression_achieved_mean": 4.0}

    # -- the call itself ---------------------------------------------------------------------
    def _events(self, messages: Any, opts: dict[str, Any]) -> list[StreamEvent]:
        call = CallOptions.parse(dict(opts))  # the real LLM's option validation
        self.calls.append(dict(opts))
        if call.policy_tier == "nope":
            raise InvalidRequestError("policy_tier", "no tier 'nope' in the policy file; tiers: default")
        prompt = self.count_tokens(messages, call.tools)
        if prompt > self.max_context:
            raise PromptTooLongError(prompt, self.max_context)
        msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
        last = _text(next((m.get("content") for m in reversed(msgs) if m["role"] in ("user", "tool")), ""))
        if "explode" in last:
            raise RuntimeError("boom")
        if "full" in last:
            raise PoolExhaustedError("the request needs 900 pages; the pool has 100")
        events: list[StreamEvent] = []
        budget = call.thinking_budget or 0
        reasoning = [f"think{i} " for i in range(min(budget, self.pieces))]
        events += [StreamEvent("reasoning", r) for r in reasoning]
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        if call.tools and "weather" in last:
            calls.append(ToolCall("call_w1", "get_weather", {"city": "Paris", "days": 2}))
        elif call.tools and "broken" in last:
            invalid.append(InvalidToolCall("call_b1", "get_weather", '{"city": Par', "Expecting value"))
        n = call.max_tokens if call.max_tokens is not None else self.pieces
        text = [] if calls else [f"echo{i}:{last} "[: 40] for i in range(min(n, self.pieces))]
        events += [StreamEvent("text", t) for t in text]
        if "crash" in last:  # fails after the first delta, when the 200 has already gone out
            events.insert(1, None)  # type: ignore[arg-type]
        events += [StreamEvent("tool_call", tool_call=c) for c in [*calls, *invalid]]
        out_tokens = len(reasoning) + len(text) + len(calls) + len(invalid)
        usage = Usage(
            input_tokens=prompt, output_tokens=out_tokens, reasoning_tokens=len(reasoning),
            kv=KVMemory(logical_bytes=256 * (prompt + out_tokens), live_bytes=64 * (prompt + out_tokens),
                        reserved_bytes=4096, peak_live_bytes=64 * (prompt + out_tokens),
                        compression_requested=float(call.compression or 8.0), compression_achieved=4.0,
                        evicted_tokens=3, kv_bytes_read=1234, mode="dms"),
            prefill_seconds=0.25, decode_seconds=0.5,
            plan=Plan(thinking_budget=call.thinking_budget, answer_reserve=0, compression=call.compression or 8.0,
                      max_tokens=call.max_tokens if call.max_tokens is not None else self.pieces,
                      reasons={"compression": "requested by the caller", "tier": f"tier '{call.policy_tier}'"}),
        )
        gen = Generation(
            text="".join(text), reasoning="".join(reasoning),
            finish_reason="tool_calls" if (calls or invalid) else ("length" if call.max_tokens is not None else "stop"),
            usage=usage, prompt_token_ids=list(range(prompt)), token_ids=list(range(100, 100 + out_tokens)),
            tool_calls=calls, invalid_tool_calls=invalid, model=self.model_name,
        )
        return [*events, StreamEvent("done", generation=gen)]

    def _enter(self) -> None:
        with self._lock:
            self.active += 1

    def _leave(self, finished: bool, n: int) -> None:
        with self._lock:
            self.active -= 1
            self.tokens_generated += n
            if finished:
                self.finished += 1
            else:
                self.cancelled += 1

    def stream(self, messages: Any, **opts: Any) -> Iterator[StreamEvent]:
        events = self._events(messages, opts)  # errors raise before the first event, like LLM
        return self._run(events)

    def _run(self, events: list[StreamEvent]) -> Iterator[StreamEvent]:
        self._enter()
        sent, finished = 0, False
        try:
            for ev in events:
                if self.delay:
                    time.sleep(self.delay)
                if ev is None:
                    raise RuntimeError("the engine crashed mid-stream")
                yield ev
                sent += 1
            finished = True
        finally:
            self._leave(finished, sent)

    def generate(self, messages: Any, **opts: Any) -> Generation:
        return [ev for ev in self.stream(messages, **opts)][-1].generation

    async def astream(self, messages: Any, **opts: Any) -> AsyncIterator[StreamEvent]:
        events = self._events(messages, opts)
        self._enter()
        sent, finished = 0, False
        try:
            for ev in events:
                if self.delay:
                    await asyncio.sleep(self.delay)
                if ev is None:
                    raise RuntimeError("the engine crashed mid-stream")
                yield ev
                sent += 1
            finished = True
        finally:  # reached on aclose() and on task cancellation: the request counts as cancelled
            self._leave(finished, sent)

    async def agenerate(self, messages: Any, **opts: Any) -> Generation:
        return self.generate(messages, **opts)
