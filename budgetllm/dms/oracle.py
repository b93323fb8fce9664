"""Brute-force attention over a whole sequence under the DMS mask: the oracle every path is checked against."""

from __future__ import annotations

import torch

from budgetllm.dms.mask import dms_visibility_mask


def dms_attention_bruteforce(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flags: torch.Tensor,
                             window: int, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, H, D], flags [T, H] (fate of each token) -> out [T, Hq, D], in float64."""
    T, Hq, D = q.shape
    H = k.shape[1]
    G = Hq // H
    mask = dms_visibility_mask(flags, window)  # [H, T, T]
    mask = mask.repeat_interleave(G, dim=0)  # [Hq, T, T]
    qd, kd, vd = q.double(), k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    scores = torch.einsum("qhd,khd->hqk", qd, kd) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, vd)
