"""Next-token sampling: greedy, temperature, top-k, top-p, with a per-request seeded generator.

A request with a grammar (:class:`budgetllm.constrain.Constraint`) passes it for answer tokens:
the tokens it does not allow are masked before sampling. When it allows nothing (a dead end),
the sampler returns -1 and the loop ends the request.
"""

from __future__ import annotations

import torch

from budgetllm.types import SamplingParams


class Sampler:
    def __init__(self, params: SamplingParams, device: torch.device):
        self.params = params
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed() % (2**63))

        self._bitmask: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, banned: list[int] | None = None, constraint=None) -> int:
        """logits: [vocab] float32 -> token id (-1: the constraint allows no token)."""
        logits = logits.float().clone()
        if banned:
            logits[banned] = float("-inf")
        if constraint is not None:
            from budgetllm.constrain.mask import allocate_bitmask, apply_bitmask

            if self._bitmask is None:
                self._bitmask = allocate_bitmask(1, constraint.vocab_size)
            if constraint.fill(self._bitmask, 0):
                apply_bitmask(logits[None], self._bitmask.to(logits.device))
                if not bool(torch.isfinite(logits).any()):
                    return -1
        p = self.params
        if p.greedy:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k and p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            drop = cum - sorted_p > p.top_p  # keep the smallest prefix whose mass reaches top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, idx, sorted_p)
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=self.generator))
