"""Eviction rules as per-row tensors, so one batch mixes requests with different rules.

The codes and the per-row values come from :meth:`budgetllm.engine.eviction.EvictionRule.row` (the
one place they are derived). Every batch row carries ``code`` (what decides), ``thr`` (the dms
threshold of each (layer, KV head)), ``sinks`` (window mode) and ``period`` (the "forced" benchmark
mode). :func:`step_decisions` (once per step) decides every row whose rule needs no logits; the
threshold rows (``logit > thr``) are decided per layer inside the fused q/k kernel
(``budgetllm.kernels.qkv_rope``), whose eager definition is :func:`layer_decisions`
(:func:`decide_rows` = both; the reference backend decides through it). All on the GPU, inside a
CUDA graph.

Benchmark hook (random-weight models, whose learned decisions mean nothing):
``EvictionRule("forced", window=w, period=CR)`` flags token k iff ``k % period != 0``, so every KV
head evicts exactly 1 - 1/CR of the tokens that leave the window (``budgetllm.benchmarks``).
"""

from __future__ import annotations

import torch

from budgetllm.engine.eviction import ALWAYS, DENSE, FORCED, THRESHOLD, WINDOW, RowRule

# the rule codes the step kernels decide with, in their order (kernels/step_inputs.py, prefill_inputs.py)
STEP_CODES = (WINDOW, ALWAYS, FORCED, THRESHOLD)

__all__ = ["ALWAYS", "DENSE", "FORCED", "STEP_CODES", "THRESHOLD", "WINDOW", "RowRule", "decide_rows", "layer_decisions",
           "step_decisions"]


def step_decisions(pos: torch.Tensor, code: torch.Tensor, sinks: torch.Tensor, period: torch.Tensor,
                   num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer-independent part, computed once per step: (decisions of every non-threshold row
    [N, H] bool, which rows use the threshold [N, 1] bool). pos [N] int64; code/sinks/period [N] int."""
    k = (pos - 1)[:, None]
    c = code[:, None]
    out = torch.where(c == WINDOW, k >= sinks[:, None], c == ALWAYS)
    out = torch.where(c == FORCED, k % period[:, None].clamp(min=1) != 0, out)
    return out.expand(pos.shape[0], num_kv_heads).contiguous(), c == THRESHOLD


def layer_decisions(logits: torch.Tensor | None, thr: torch.Tensor, base: torch.Tensor,
                    uses_thr: torch.Tensor) -> torch.Tensor:
    """Decisions [N, H] of one layer: ``logits > thr`` on threshold rows (compared in float64, like
    the reference's Python float; ``thr`` [N] or this layer's [N, H]), ``base`` elsewhere. The engine
    runs this inside ``kernels.qkv_rope``."""
    if logits is None:
        return base
    return torch.where(uses_thr, logits > (thr if thr.dim() == 2 else thr[:, None]), base)


def decide_rows(logits: torch.Tensor | None, pos: torch.Tensor, code: torch.Tensor, thr: torch.Tensor,
                sinks: torch.Tensor, period: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Both parts at once (the reference backend, tests and one-off use)."""
    base, uses_thr = step_decisions(pos, code, sinks, period, num_kv_heads)
    return layer_decisions(logits, thr, base, uses_thr)
