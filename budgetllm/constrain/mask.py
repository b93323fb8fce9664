"""Packed token bitmasks on torch tensors: allocate on the host, apply to logits on any device.

``apply_bitmask(logits, bitmask, rows)`` sets the logits of disallowed tokens to -inf for the
listed rows only (the batched GPU sampler passes exactly the constrained rows). Pure tensor ops, no
host sync, no data-dependent shapes: it runs inside a CUDA graph and on the CPU alike. The naive
twin ``apply_bitmask_reference`` loops over tokens and is the test oracle.
"""

from __future__ import annotations

import torch

from budgetllm.constrain.matcher import bitmask_width

_SHIFTS: dict[torch.device, torch.Tensor] = {}
_BITS: dict[torch.device, torch.Tensor] = {}


def allocate_bitmask(batch: int, vocab_size: int, pin: bool = False) -> torch.Tensor:
    """[batch, ceil(vocab/32)] int32, every token allowed (-1 = all 32 bits set)."""
    return torch.full((batch, bitmask_width(vocab_size)), -1, dtype=torch.int32, pin_memory=pin)


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, W] int32 -> [B, vocab] bool."""
    shifts = _SHIFTS.get(bitmask.device)
    if shifts is None:
        shifts = _SHIFTS[bitmask.device] = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask[:, :, None] >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def _blocked(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, W] int32 -> [B, vocab] bool, True = disallowed: one AND with the 32 bit values and one
    compare (two kernels; the logits path of every constrained step)."""
    bits = _BITS.get(bitmask.device)
    if bits is None:
        bits = _BITS[bitmask.device] = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int32,
                                                    device=bitmask.device)
    return ((bitmask[:, :, None] & bits) == 0).reshape(bitmask.shape[0], -1)[:, :vocab]


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """In place: logits [B, V] (rows given: bitmask [K, W] for logits[rows]; else bitmask [B, W])."""
    vocab = logits.shape[-1]
    width = min(vocab, bitmask.shape[-1] * 32)
    blocked = _blocked(bitmask, width)
    if rows is None:
        logits[:, :width].masked_fill_(blocked, float("-inf"))
        if width < vocab:  # logits wider than the grammar's vocabulary: the rest is never allowed
            logits[:, width:] = float("-inf")
    else:
        sub = logits.index_select(0, rows)
        sub[:, :width].masked_fill_(blocked, float("-inf"))
        if width < vocab:
            sub[:, width:] = float("-inf")
        logits.index_copy_(0, rows, sub)


def apply_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int] | None = None) -> None:
    """The naive twin: one token at a time."""
    rows = list(range(logits.shape[0])) if rows is None else rows
    for k, b in enumerate(rows):
        for t in range(logits.shape[1]):
            word = t // 32
            ok = word < bitmask.shape[1] and (int(bitmask[k, word]) >> (t % 32)) & 1
            if not ok:
                logits[b, t] = float("-inf")
