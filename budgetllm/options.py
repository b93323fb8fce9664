"""Per-call options: validation with messages that name the field (the call's eviction rule is built
once, by ``budgetllm.engine.eviction.EvictionRule.for_call``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from budgetllm.errors import InvalidRequestError

_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass
class CallOptions:
    max_tokens: int | None = None
    thinking_budget: int | None = None
    answer_reserve: int | None = None
    compression: float | None = None
    reasoning_effort: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None
    policy: Any = None
    policy_tier: str | None = None
    agent_budget: Any = None
    tool_name: str | None = None
    temperature_requested: float | None = None
    top_p_requested: float | None = None

    @classmethod
    def parse(cls, opts: dict[str, Any]) -> CallOptions:
        known = {f.name for f in fields(cls)} - {"temperature_requested", "top_p_requested"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise InvalidRequestError(unknown[0], f"unknown option; known options: {', '.join(sorted(known))}")
        opts = {k: v for k, v in opts.items() if v is not None}
        call = cls(**opts)
        call.temperature_requested = opts.get("temperature")
        call.top_p_requested = opts.get("top_p")
        call.validate()
        return call

    def validate(self) -> None:
        for name in ("max_tokens", "thinking_budget", "answer_reserve", "top_k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidRequestError(name, f"must be a non-negative integer, got {value!r}")
        if self.compression is not None and (
            isinstance(self.compression, bool) or not isinstance(self.compression, (int, float))
            or not self.compression > 0 or not math.isfinite(self.compression)
        ):
            raise InvalidRequestError("compression", f"must be a number > 0 (1 = no compression), got {self.compression!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise InvalidRequestError("temperature", f"must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InvalidRequestError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if self.reasoning_effort is not None and self.reasoning_effort not in _EFFORTS:
            raise InvalidRequestError("reasoning_effort", f"must be one of {', '.join(_EFFORTS)}, got {self.reasoning_effort!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]

