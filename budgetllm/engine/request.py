"""One generation request as the backends see it, and what a backend yields per step (torch-free).

Both backends (``engine.reference``, ``engine.paged``) take a :class:`GenerationRequest` and yield
:class:`StepOutput` items; ``engine.output.CallOutput`` turns those into stream events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from budgetllm.accounting.meter import KVMeter
from budgetllm.engine.thinking import ThinkingController
from budgetllm.types import SamplingParams

if TYPE_CHECKING:  # eviction.py imports torch; this module stays torch-free
    from budgetllm.engine.eviction import EvictionRule


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    rule: EvictionRule
    sampling: SamplingParams
    controller: ThinkingController
    meter: KVMeter
    eos_ids: set[int]
    banned_after_thinking: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    cached_tokens: int = 0  # prompt tokens whose compressed cache was reused from an earlier call
    # token counts inside the prompt where the backend keeps a reusable state too (besides the prompt
    # end and the request's end): e.g. before a thinking open tag the next turn's history lacks
    keep_at: tuple = ()
    cancelled: bool = False
    # a grammar for the answer (budgetllm.constrain.Constraint): masks sampling, sees every answer token
    constraint: object = None
    # seconds from the call to: first scheduled, its first forward launched, that forward read back
    # (paged backend; for time-to-first-token breakdowns in benchmarks)
    phases: dict = field(default_factory=dict)


@dataclass
class StepOutput:
    token_id: int
    thinking: bool  # the token belongs to the reasoning block (forced tokens included)
    finished: str | None = None  # "stop" | "length" when the request ended at this step
