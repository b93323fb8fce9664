"""Eviction rules as per-row tensors, so one batch mixes requests with different rules.

Every batch row carries ``code`` (what decides), ``thr`` (dms threshold), ``sinks`` (window mode)
and ``period`` (the "forced" benchmark mode). :func:`step_decisions` (once per step) decides every
row whose rule needs no logits; the threshold rows (``logit > thr``) are decided per layer inside the
fused q/k kernel (``budgetllm.kernels.qkv_rope``), whose eager definition is :func:`layer_decisions`
(:func:`decide_rows` = both, for tests). All on the GPU, inside a CUDA graph. Each code mirrors
``EvictionRule.decide`` exactly, so both backends flag the same tokens.

Benchmark hook (random-weight models, whose learned decisions mean nothing):
``EvictionRule("forced", window=w, period=CR)`` flags token k iff ``k % period != 0``, so every KV
head evicts exactly 1 - 1/CR of the tokens that leave the window (``budgetllm.benchmarks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from budgetllm.engine.eviction import EvictionRule

DENSE, THRESHOLD, WINDOW, FORCED, ALWAYS = 0, 1, 2, 3, 4  # ALWAYS: CUDA-graph padding rows


@dataclass(frozen=True)
class RowRule:
    code: int = DENSE
    thr: float = math.inf
    sinks: int = 0
    period: int = 1


def row_rule(rule: EvictionRule, has_logits: bool) -> RowRule:
    """The per-row encoding of ``rule``; mirrors EvictionRule.decide."""
    if rule.mode == "dms" and has_logits and rule.threshold != math.inf:
        return RowRule(THRESHOLD, thr=float(rule.threshold))
    if rule.mode == "forced":
        return RowRule(FORCED, period=max(1, int(getattr(rule, "period", 1))))
    if rule.mode == "window":
        return RowRule(WINDOW, sinks=int(rule.sinks))
    return RowRule(DENSE)


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
    the reference's Python float), ``base`` elsewhere. The engine runs this inside ``kernels.qkv_rope``."""
    if logits is None:
        return base
    return torch.where(uses_thr, logits > thr[:, None], base)


def decide_rows(logits: torch.Tensor | None, pos: torch.Tensor, code: torch.Tensor, thr: torch.Tensor,
                sinks: torch.Tensor, period: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Both parts at once (tests and one-off use)."""
    base, uses_thr = step_decisions(pos, code, sinks, period, num_kv_heads)
    return layer_decisions(logits, thr, base, uses_thr)
