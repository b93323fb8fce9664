"""Plain records that cross module boundaries. Standard library only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass
class SamplingParams:
    """How the next token is picked. ``temperature == 0`` is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class ThinkingConfig:
    """Where thinking starts and ends, and how a budget closes it (docs/notes/budget.md §1.4)."""

    open_tag: str = "<think>\n"
    close_tag: str = "</think>"
    # Written as model tokens when the budget runs out, then the close tag and this suffix.
    handoff: str = (
        "\n\nConsidering the limited time by the user, I have to give the solution "
        "based on the thinking directly now.\n"
    )
    after_close: str = "\n\n"


@dataclass
class KVMemory:
    """KV-cache memory of one call, in bytes unless named otherwise.

    logical_bytes: what a dense cache would hold for the whole sequence at the end.
    live_bytes: K/V entries really kept at the end (all layers and KV heads).
    reserved_bytes: memory the backend holds for the call (pages, or tensor capacity).
    peak_live_bytes: the largest live_bytes seen at any step.
    compression_requested / compression_achieved: requested ratio, measured logical/live.
    evicted_tokens: (layer, head) token entries dropped, summed over layers and heads.
    kv_bytes_read: K/V bytes the attention read during decode, summed over steps.
    window: tokens a row keeps before it may evict (DMS / window modes; 0 when nothing can be evicted):
    a call whose prompt and output fit in it cannot compress, whatever ratio was requested.
    """

    logical_bytes: int = 0
    live_bytes: int = 0
    reserved_bytes: int = 0
    peak_live_bytes: int = 0
    compression_requested: float = 1.0
    compression_achieved: float = 1.0
    evicted_tokens: int = 0
    kv_bytes_read: int = 0
    mode: str = "dense"  # "dms" (learned decisions), "window" (StreamingLLM), "dense"
    window: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """What one call will do, and why (a budget policy's decision, fitted once by the policy layer).

    thinking_budget: max reasoning tokens (None: no thinking block; 0: thinking off).
    answer_reserve: tokens kept for the answer after thinking closes.
    compression: KV compression ratio (1 = dense, exactly the base model).
    max_tokens: cap on all generated tokens (reasoning + answer).
    width: parallel samples with majority vote over extracted answers (1 = one sample).
    reasons: a readable reason for each choice, keyed by the field name.
    peak_kv_bytes / kv_bytes_read: the cost model's estimate for the worst case (every allowed
        token generated); None when the model's KV bytes per token are unknown.
    expected_accuracy: from a calibration table, when a calibrated policy chose the plan.
    escalation_attempt: 0 for a first try; n for the plan of the n-th try after an escalation.
    """

    thinking_budget: int | None
    answer_reserve: int
    compression: float
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    width: int = 1
    reasons: dict[str, str] = field(default_factory=dict)
    policy: str = "fixed"
    peak_kv_bytes: int | None = None
    kv_bytes_read: int | None = None
    expected_accuracy: float | None = None
    escalation_attempt: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """The edge's way back (a plan read from JSON); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        for name in ("thinking_budget", "answer_reserve", "compression", "max_tokens"):
            values.setdefault(name, None if name == "thinking_budget" else 0)
        return cls(**values)


@dataclass
class Usage:
    """Token and memory accounting of one call."""

    input_tokens: int = 0
    output_tokens: int = 0  # includes reasoning tokens
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a reused compressed cache (not prefilled again)
    kv: KVMemory = field(default_factory=KVMemory)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    plan: Plan | None = None  # the budget plan applied (thinking budget, compression, reasons)
    forced_close: bool = False  # the thinking budget ran out and the engine closed the block

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # the plan becomes a dict too (asdict recurses)
        d["total_tokens"] = self.total_tokens
        return d


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class InvalidToolCall:
    id: str
    name: str | None
    raw: str
    error: str


@dataclass
class Generation:
    """The result of one call."""

    text: str  # the answer, without reasoning and without tool-call markup
    reasoning: str
    finish_reason: FinishReason
    usage: Usage
    prompt_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # every generated token, forced ones included
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    model: str = ""


@dataclass
class StreamEvent:
    """One piece of a streamed call.

    kind "reasoning" / "text": a text delta; "tool_call": one complete (or invalid) tool call;
    "tool_call_delta": a piece of a tool call while it is written (``tool_delta``: a
    ``budgetllm.tool_stream.CallDelta``: index, argument text, and name and id on its first piece);
    "done": the last event, carrying the whole Generation (with usage).
    """

    kind: Literal["reasoning", "text", "tool_call", "tool_call_delta", "done"]
    text: str = ""
    tool_call: ToolCall | InvalidToolCall | None = None
    generation: Generation | None = None
    tool_delta: Any = None
