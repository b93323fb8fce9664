"""A scripted stand-in for budgetllm.LLM, for tests that need no model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.tools import tool

from budgetllm import (
    AgentBudget,
    CallContext,
    FixedPolicy,
    Generation,
    KVMemory,
    Plan,
    RequestedLimits,
    StreamEvent,
    Usage,
)
from budgetllm.chat_format import ToolCallStreamSplitter, parse_tool_calls
from budgetllm.options import CallOptions
from budgetllm.policy import plan_call

# What ChatDMS sends to the real model in tests: CPU, reference backend, short outputs.
REAL_PARAMS = {"device": "cpu", "backend": "reference", "max_tokens": 16, "temperature": 0}

# Tools the scripted answers call, and the model's markup for a call of ``add``.
ADD_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>'


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def lookup(key: str) -> str:
    """Look a word up."""
    return key.upper()


@dataclass
class Scripted:
    """One scripted answer: raw model output (tool markup included) and optional reasoning."""

    output: str = "Hello! How can I help?"
    reasoning: str = ""
    finish: str = "stop"


@dataclass
class FakeLLM:
    """The LLM surface ChatDMS uses (stream/astream/generate/agenerate/count_tokens), scripted.

    Each call takes the next entry of ``script`` (or calls ``script(messages, opts)``), streams it
    in small pieces through budgetllm.chat_format like the real engine, and records
    ``(messages, opts)``. Options are validated with the engine's own CallOptions, and each call
    is planned as the engine plans it (its policy, else a FixedPolicy, through ``plan_call``).
    """

    script: list[Scripted] | Callable[[list, dict], Scripted] = field(default_factory=list)
    model_name: str = "fake-dms"
    max_context: int = 2048
    piece: int = 4
    calls: list[tuple[list, dict]] = field(default_factory=list)
    tokenizer: Any = None
    closed: int = 0

    @property
    def profile(self):
        from budgetllm import ModelProfile

        return ModelProfile(name=self.model_name, kv_bytes_per_token=1024, max_context=self.max_context)

    def count_tokens(self, messages, tools=None) -> int:
        text = " ".join(str(m.get("content", "")) for m in messages) if isinstance(messages, list) else messages
        return len(text.split()) + 3 * len(messages) + (20 * len(tools) if tools else 0)

    def _next(self, messages, opts) -> Scripted:
        if callable(self.script):
            return self.script(messages, opts)
        if not self.script:
            return Scripted()
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def stream(self, messages, **opts):
        call = CallOptions.parse(dict(opts))
        self.calls.append((messages, dict(opts)))
        n_in = self.count_tokens(messages)
        plan = self._plan(call, n_in)
        s = self._next(messages, opts)
        try:
            for i in range(0, len(s.reasoning), self.piece):
                yield StreamEvent("reasoning", s.reasoning[i : i + self.piece])
            splitter = ToolCallStreamSplitter() if call.tools else None
            for i in range(0, len(s.output), self.piece):
                delta = s.output[i : i + self.piece]
                pieces = splitter.feed(delta) if splitter else [("text", delta)]
                for _, p in pieces:
                    yield StreamEvent("text", p)
            text, calls, invalid = s.output, [], []
            finish = s.finish
            if splitter is not None:
                tail = splitter.finish()
                if tail and "<tool_call>" not in tail:
                    yield StreamEvent("text", tail)
                text, calls, invalid = parse_tool_calls(s.output)
                for c in [*calls, *invalid]:
                    yield StreamEvent("tool_call", tool_call=c)
                if calls or invalid:
                    finish = "tool_calls"
            n_out = len(s.output.split()) + len(s.reasoning.split())
            comp = plan.compression
            logical = (n_in + n_out) * 1024
            kv = KVMemory(
                logical_bytes=logical,
                live_bytes=int(logical / comp),
                reserved_bytes=logical,
                peak_live_bytes=int(logical / comp),
                compression_requested=comp,
                compression_achieved=comp,
                evicted_tokens=n_in,
                kv_bytes_read=n_out * logical // 2,
                mode="dms",
            )
            usage = Usage(
                input_tokens=n_in,
                output_tokens=n_out,
                reasoning_tokens=len(s.reasoning.split()),
                kv=kv,
                prefill_seconds=0.01,
                decode_seconds=0.02,
                plan=plan,
            )
            gen = Generation(text, s.reasoning, finish, usage, tool_calls=calls, invalid_tool_calls=invalid, model=self.model_name)
            yield StreamEvent("done", generation=gen)
        except GeneratorExit:
            self.closed += 1
            raise

    def _plan(self, call: CallOptions, prompt_tokens: int) -> Plan:
        """The call's plan as the real engine makes it: its policy (else FixedPolicy), fitted once."""
        requested = RequestedLimits(call.thinking_budget, call.compression, call.reasoning_effort, call.max_tokens,
                                    call.temperature_requested, call.top_p_requested, answer_reserve=call.answer_reserve)
        context = CallContext(prompt_tokens=prompt_tokens, requested=requested, agent=call.agent_budget or AgentBudget(),
                              model=self.profile, tool_name=call.tool_name, tier=call.policy_tier)
        return plan_call(call.policy or FixedPolicy(compression=8.0), context)

    def generate(self, messages, **opts):
        final = None
        for e in self.stream(messages, **opts):
            if e.kind == "done":
                final = e.generation
        return final

    async def agenerate(self, messages, **opts):
        return self.generate(messages, **opts)

    async def astream(self, messages, **opts):
        for e in self.stream(messages, **opts):
            await asyncio.sleep(0)
            yield e
