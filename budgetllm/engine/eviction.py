"""How one call decides which tokens to evict: learned DMS decisions, a sliding window, or nothing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EvictionRule:
    """mode "dms": evict a token when the next token's decision logit > threshold.
    mode "window": StreamingLLM — keep ``sinks`` first tokens and the last ``window`` + 1.
    mode "dense": keep everything (compression 1: exactly the base model).
    mode "forced": a benchmark hook for random-weight models: every head flags all tokens but one
    in ``period`` (token k is flagged iff k % period != 0), so each head's eviction rate is exactly
    1 - 1/period — the shape of a trained DMS model at that ratio, without training.
    """

    mode: str = "dense"
    window: int = 512
    threshold: float = math.inf
    sinks: int = 4
    period: int = 1

    def decide(self, logits: torch.Tensor | None, positions: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
        """Decisions [T, H] for tokens at ``positions``: decision t is the fate of token t-1."""
        T = positions.shape[0]
        if self.mode == "dms" and logits is not None and self.threshold != math.inf:
            out = logits > self.threshold
        elif self.mode == "forced":
            out = ((positions - 1) % self.period != 0)[:, None].expand(T, num_kv_heads)
        elif self.mode == "window":
            out = (positions - 1 >= self.sinks)[:, None].expand(T, num_kv_heads)
        else:
            out = torch.zeros(T, num_kv_heads, dtype=torch.bool, device=positions.device)
        return out.clone()

    @property
    def evicts(self) -> bool:
        return self.mode in ("window", "forced") or (self.mode == "dms" and self.threshold != math.inf)
