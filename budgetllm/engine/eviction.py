"""The eviction decision of one call, in one place: what decides, at which threshold(s), and how
that reads as per-row codes for the batched engine.

:meth:`EvictionRule.for_call` builds the rule once per call (ratio -> thresholds); the reference
backend (:meth:`EvictionRule.decide`), the paged engine (:meth:`EvictionRule.row`, whose codes the
fused q/k kernel reads) and the meter (``ratio``, ``mode``, :attr:`EvictionRule.expected_cr`) all read
it. ``decide`` is the row encoding evaluated by :func:`budgetllm.engine.rules.decide_rows`, the
eager definition of what the kernel computes, so both backends flag the same tokens by construction.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

# The row codes (int32 in the engine's buffers; the kernels read them).
DENSE, THRESHOLD, WINDOW, FORCED, ALWAYS = 0, 1, 2, 3, 4  # ALWAYS: CUDA-graph padding rows

Threshold = float | tuple[tuple[float, ...], ...]  # one number, or [layer][kv head]


@dataclass(frozen=True)
class RowRule:
    """One rule as per-row values: code, threshold (a number or a [layer][kv head] grid), sinks, period."""

    code: int = DENSE
    thr: Threshold = math.inf
    sinks: int = 0
    period: int = 1

    def thr_grid(self, num_layers: int, num_kv_heads: int) -> torch.Tensor:
        """The threshold as a float64 [L, H] CPU tensor (a number is broadcast); built once per rule
        (the engine stages it every decode step), so treat it as read-only."""
        cached = self.__dict__.get("_grid")
        if cached is None or cached.shape != (num_layers, num_kv_heads):
            if isinstance(self.thr, tuple):
                cached = torch.tensor(self.thr, dtype=torch.float64)
            else:
                cached = torch.full((num_layers, num_kv_heads), float(self.thr), dtype=torch.float64)
            object.__setattr__(self, "_grid", cached)  # a cache, not a field: eq and hash ignore it
        return cached


def _finite(threshold: Threshold) -> bool:
    return isinstance(threshold, tuple) or threshold != math.inf


@dataclass(frozen=True)
class EvictionRule:
    """mode "dms": evict a token when the next token's decision logit > its (layer, KV head) threshold.
    mode "window": StreamingLLM -- keep ``sinks`` first tokens and the last ``window`` + 1.
    mode "dense": keep everything (compression 1: exactly the base model).
    mode "forced": a benchmark hook for random-weight models: every head flags all tokens but one
    in ``period`` (token k is flagged iff k % period != 0), so each head's eviction rate is exactly
    1 - 1/period -- the shape of a trained DMS model at that ratio, without training.
    ratio: the compression the call asked for (what the meter reports as requested);
    source: where the threshold came from ("table", "trained rule", "prompt quantile", ...).
    """

    mode: str = "dense"
    window: int = 512
    threshold: Threshold = math.inf
    sinks: int = 4
    period: int = 1
    ratio: float = 1.0
    source: str = ""

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def for_call(cls, dms, compression: float, total_tokens: int, prompt_ids=(), loaded=None) -> EvictionRule:
        """The rule for one call.

        * compression 1 (or a checkpoint with ``dms_disable_eviction``): dense, exactly the base model.
        * learned decisions: :meth:`DMSSpec.thresholds_for` -- the per-(layer, KV head) table fitted
          once (at training or by ``budgetllm calibrate-thresholds``), else the trained rule at the
          trained ratio. Last resort, for a model without a table asked for another ratio: the same
          fit run on this prompt's decision logits (one dense pass, subsampled; prompts under 16
          tokens use the trained rule), with a warning that names the command that avoids it.
        * no decisions: the training-free sliding window (StreamingLLM: 4 sinks and the last W
          tokens) with W chosen so that the whole call lands near the ratio (W >= 64).
        """
        if compression <= 1.0 or (dms.has_decisions and dms.disable_eviction):
            return cls("dense", window=dms.window, ratio=float(compression),
                       source="dms_disable_eviction" if compression > 1.0 else "")
        if not dms.has_decisions:
            sinks = 4
            window = max(64, math.ceil(total_tokens / compression) - sinks)
            return cls("window", window=window, sinks=sinks, ratio=float(compression), source="sliding window")
        threshold = dms.thresholds_for(compression)
        source = "table" if dms.threshold_table else "trained rule"
        if threshold is None:
            threshold, source = 0.0, "trained rule (prompt too short to calibrate)"
            if loaded is not None and len(prompt_ids) >= 16:
                from budgetllm.dms.thresholds import prompt_thresholds

                warnings.warn(f"{loaded.name} has no threshold table: compression {compression:g} is calibrated on "
                              "this prompt (an extra dense pass per call); run `budgetllm calibrate-thresholds` once "
                              "to avoid it", stacklevel=3)
                threshold, source = prompt_thresholds(loaded, list(prompt_ids), compression), "prompt quantile"
        return cls("dms", window=dms.window, threshold=threshold, ratio=float(compression), source=source)

    # -- reading ----------------------------------------------------------------------------
    def row(self, has_logits: bool) -> RowRule:
        """The per-row encoding (the one place the int codes come from)."""
        if self.mode == "dms" and has_logits and _finite(self.threshold):
            return RowRule(THRESHOLD, thr=self.threshold)
        if self.mode == "forced":
            return RowRule(FORCED, period=max(1, int(self.period)))
        if self.mode == "window":
            return RowRule(WINDOW, sinks=int(self.sinks))
        return RowRule(DENSE)

    def decide(self, logits: torch.Tensor | None, positions: torch.Tensor, num_kv_heads: int,
               layer: int = 0) -> torch.Tensor:
        """Decisions [T, H] of ``layer`` for tokens at ``positions``: decision t is the fate of token t-1."""
        from budgetllm.engine.rules import decide_rows

        r = self.row(logits is not None)
        T, dev = positions.shape[0], positions.device
        thr = r.thr_grid(layer + 1, num_kv_heads)[layer].to(dev)[None].expand(T, num_kv_heads)
        full = lambda v: torch.full((T,), v, dtype=torch.int32, device=dev)  # noqa: E731
        return decide_rows(logits, positions, full(r.code), thr, full(r.sinks), full(r.period), num_kv_heads).clone()

    @property
    def evicts(self) -> bool:
        return self.mode in ("window", "forced") or (self.mode == "dms" and _finite(self.threshold))

    @property
    def expected_cr(self) -> float:
        """The ratio the engine plans pages for (admission); the achieved one is measured."""
        if self.mode == "forced":
            return float(max(1, self.period))
        return max(1.0, self.ratio) if self.evicts else 1.0
