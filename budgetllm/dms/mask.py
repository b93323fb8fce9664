"""From per-token decisions to the delayed-eviction visibility mask (docs/notes/dms.md §1.3–1.5)."""

from __future__ import annotations

import torch


def evict_flags_from_decisions(decisions: torch.Tensor) -> torch.Tensor:
    """decisions [T, H] (decision computed at token t) -> flags [T, H] (fate of token t).

    The decision made while processing token t+1 is the fate of token t; the last token's fate is
    not known yet (False).
    """
    flags = torch.zeros_like(decisions, dtype=torch.bool)
    flags[:-1] = decisions[1:].bool()
    return flags


def dms_visibility_mask(flags: torch.Tensor, window: int, q_pos: torch.Tensor | None = None,
                        k_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys each query sees, per KV head.

    flags: [K, H] evict flags of the keys; window: w (a flagged key k is visible to query q while
    q - k <= w). q_pos [Q] / k_pos [K] default to 0..T-1. Returns bool [H, Q, K].
    """
    K = flags.shape[0]
    k_pos = torch.arange(K, device=flags.device) if k_pos is None else k_pos
    q_pos = torch.arange(K, device=flags.device) if q_pos is None else q_pos
    dist = q_pos[:, None] - k_pos[None, :]  # [Q, K]
    causal = dist >= 0
    keep = (dist <= window)[None] | ~flags.T.bool()[:, None, :]  # [H, Q, K]
    return causal[None] & keep
