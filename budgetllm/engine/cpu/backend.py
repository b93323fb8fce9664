"""The CPU backend: the reference backend's request loop over :class:`CPUSequence`.

Everything a request does besides the forward (prefix reuse of earlier turns, thinking budgets,
sampling, stop, cancellation, KV accounting) is ``ReferenceBackend``'s own code, so both backends
behave the same by construction; the forward differs only in layout and speed.
"""

from __future__ import annotations

from budgetllm.engine.cpu.sequence import CPUSequence, CPUWeights
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.generation import ReferenceBackend
from budgetllm.errors import InvalidRequestError
from budgetllm.models.loading import LoadedModel


class CPUBackend(ReferenceBackend):
    """Decodes on the CPU with one attention call per layer over all KV heads (padded rows, per-head lengths)."""

    name = "cpu"

    def __init__(self, model: LoadedModel, prefix_cache: bool = True):
        if model.device.type != "cpu":
            raise InvalidRequestError("backend", f"the cpu backend runs on the CPU, the model is on "
                                      f"{model.device}; use backend='paged' or 'reference'")
        super().__init__(model, prefix_cache=prefix_cache)
        self.weights = CPUWeights(model)

    def new_sequence(self, rule: EvictionRule, collect_logits: bool = False) -> CPUSequence:
        # requests read only the last token's logits; calibration reads only the decision logits
        return CPUSequence(self.weights, rule, collect_logits=collect_logits, last_logits_only=True)
