"""The policy contract: ``policy.plan(context) -> Plan``. Plain dataclasses, standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from budgetllm.types import Plan  # the policy's output record, shared with accounting and the engine


@dataclass(frozen=True)
class RequestedLimits:
    """What the caller asked for; ``None`` means "let the policy decide"."""

    thinking_budget: int | None = None
    compression: float | None = None
    reasoning_effort: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    answer_reserve: int | None = None  # the caller's reserve replaces the policy's (see policy.fit)


@dataclass(frozen=True)
class AgentBudget:
    """What an agent has left across its calls; ``None`` means unlimited."""

    tokens_left: int | None = None
    kv_byte_seconds_left: float | None = None
    calls_left: int | None = None
    step: int = 0
    step_name: str | None = None  # the agent step's name (e.g. "plan", "act"), for per-step overrides
    # Calls made after the budget is spent (tokens, KV byte-seconds or calls left <= 0) run with
    # thinking off and at most this many tokens; None: only tokens_left caps a call.
    max_tokens_when_spent: int | None = None

    def spent(self) -> list[str]:
        """The parts of the budget that are used up (tokens, KV byte-seconds, calls)."""
        out = []
        if self.tokens_left is not None and self.tokens_left <= 0:
            out.append("token budget")
        if self.kv_byte_seconds_left is not None and self.kv_byte_seconds_left <= 0:
            out.append("KV byte-seconds budget")
        if self.calls_left is not None and self.calls_left <= 0:
            out.append("call budget")
        return out


@dataclass(frozen=True)
class ModelProfile:
    """What the policy needs to know about the model and engine."""

    name: str = "model"
    kv_bytes_per_token: int = 0  # dense: 2 * layers * kv_heads * head_dim * dtype bytes
    window: int = 512  # DMS sliding window (tokens stay visible this long)
    native_compression: float = 1.0  # the checkpoint's trained ratio (dms_cr); 1 = no DMS
    max_context: int = 8192
    supports_compression: bool = True
    calibration: Any = None  # a CalibrationTable, or None
    thinking_open_tokens: int = 0  # tokens of the open tag the engine appends to start a thinking block
    thinking_close_tokens: int = 0  # tokens of the close tag (and what follows it) that end one


@dataclass(frozen=True)
class CallContext:
    prompt_tokens: int
    requested: RequestedLimits = field(default_factory=RequestedLimits)
    agent: AgentBudget = field(default_factory=AgentBudget)
    free_kv_bytes: int | None = None  # engine pool free memory (None: unknown / unbounded)
    total_kv_bytes: int | None = None
    model: ModelProfile = field(default_factory=ModelProfile)
    tool_name: str | None = None  # the tool whose result this call answers, if any
    tier: str | None = None  # a named tier of a policy file
    task: str | None = None  # a calibration task name (for the calibrated Pareto policy)
    thinking_open: bool = False  # the prompt itself already opens a thinking block (R1-style templates)


@runtime_checkable
class BudgetPolicy(Protocol):
    """The one extension point: anything with ``plan(context) -> Plan`` is a policy."""

    def plan(self, context: CallContext) -> Plan: ...


@dataclass
class FixedPolicy:
    """Uses what the caller asked for, else fixed defaults. The default policy of every LLM."""

    thinking_budget: int | None = None
    compression: float = 8.0
    answer_reserve: int = 256
    max_tokens: int = 512

    def plan(self, context: CallContext) -> Plan:
        req = context.requested
        reasons: dict[str, str] = {}
        budget = req.thinking_budget if req.thinking_budget is not None else self.thinking_budget
        reasons["thinking_budget"] = "requested by the caller" if req.thinking_budget is not None else "policy default"
        comp = req.compression if req.compression is not None else self.compression
        reasons["compression"] = "requested by the caller" if req.compression is not None else "policy default"
        if not context.model.supports_compression and comp != 1:
            reasons["compression"] += " (model has no DMS: window mode)"
        max_tokens = req.max_tokens if req.max_tokens is not None else self.max_tokens
        reasons["max_tokens"] = "requested by the caller" if req.max_tokens is not None else "policy default"
        if budget:
            max_tokens = max(max_tokens, 0)
        return Plan(
            thinking_budget=budget,
            answer_reserve=min(self.answer_reserve, max_tokens),
            compression=float(comp),
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            reasons=reasons,
            policy="fixed",
        )
