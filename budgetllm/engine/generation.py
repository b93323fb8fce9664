"""One generation request as the backends see it, and the reference backend's decode loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from budgetllm.accounting.meter import KVMeter
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.reference import ReferenceSequence
from budgetllm.engine.sampler import Sampler
from budgetllm.engine.thinking import ThinkingController
from budgetllm.models.loading import LoadedModel
from budgetllm.types import SamplingParams


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
    cancelled: bool = False


@dataclass
class StepOutput:
    token_id: int
    thinking: bool  # the token belongs to the reasoning block (forced tokens included)
    finished: str | None = None  # "stop" | "length" when the request ended at this step


class ReferenceBackend:
    """Runs requests one forward at a time (a lock per step, so concurrent streams interleave)."""

    name = "reference"

    def __init__(self, model: LoadedModel):
        self.model = model
        self._lock = threading.Lock()
        self.active = 0
        self.tokens_generated = 0

    def new_sequence(self, rule: EvictionRule, collect_logits: bool = False) -> ReferenceSequence:
        return ReferenceSequence(self.model, rule, collect_logits=collect_logits)

    def prompt_logits(self, prompt_ids: list[int]) -> list[torch.Tensor]:
        """Decision logits of every layer on a dense pass over the prompt (for threshold calibration)."""
        seq = self.new_sequence(EvictionRule(), collect_logits=True)
        with self._lock:
            seq.forward(prompt_ids)
        return seq.logit_log

    def run(self, req: GenerationRequest) -> Iterator[StepOutput]:
        seq = self.new_sequence(req.rule)
        sampler = Sampler(req.sampling, self.model.device)
        ctrl = req.controller
        self.active += 1
        try:
            t0 = time.perf_counter()
            with self._lock:
                logits = seq.forward(req.prompt_ids)[-1]
            req.prefill_seconds = time.perf_counter() - t0
            req.meter.observe(seq.seen, seq.live_entries())
            t0 = time.perf_counter()
            while True:
                forced = ctrl.next_forced()
                if forced is None and ctrl.answer_budget_left() <= 0:
                    yield StepOutput(-1, False, finished="length")
                    return
                if forced is not None:
                    tok = forced
                else:
                    banned = req.banned_after_thinking if not ctrl.thinking and ctrl.budget else None
                    tok = sampler(logits, banned)
                thinking = ctrl.thinking
                if thinking:
                    if not ctrl.observe(tok, is_eos=forced is None and tok in req.eos_ids):
                        continue  # an EOS inside the block: the controller closes it instead
                elif tok in req.eos_ids:
                    yield StepOutput(tok, False, finished="stop")
                    return
                else:
                    ctrl.observe(tok)
                yield StepOutput(tok, thinking)
                if req.cancelled:
                    return
                if not ctrl.thinking and ctrl.answer_budget_left() <= 0:
                    yield StepOutput(-1, False, finished="length")  # no need to feed the last token
                    return
                with self._lock:
                    logits = seq.forward([tok])[-1]
                self.tokens_generated += 1
                live = seq.live_entries()
                req.meter.observe(seq.seen, live)
                req.meter.read(live)
                req.decode_seconds = time.perf_counter() - t0
        finally:
            self.active -= 1

    def pool_stats(self) -> dict:
        return {"active": self.active, "queued": 0, "tokens_generated": self.tokens_generated}
