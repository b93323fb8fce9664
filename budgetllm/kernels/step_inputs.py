"""The start of a decode step in one launch: positions, the layer-independent eviction decisions and
each row's thresholds, from the step's staged inputs.

As torch ops (``engine.rules.step_decisions`` and a gather of the per-slot thresholds) these were
~13 small kernels at the start of every decode step, each a launch of a few µs at batch 1. One
program per row here; the naive twin is those torch ops (``kernels.reference.step_inputs``). The
rule codes are arguments (the engine owns them: ``engine/eviction.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def step_inputs_kernel(ibuf, s_i, seq_pos, thr_slot, pos, base, uses, thr, B, S_ALL, H, LH,
                       WINDOW, ALWAYS, FORCED, THRESHOLD, BLOCK_H: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    slot = tl.load(ibuf + s_i + b)
    code = tl.load(ibuf + 3 * s_i + b)
    sinks = tl.load(ibuf + 4 * s_i + b)
    period = tl.load(ibuf + 5 * s_i + b)
    p = tl.load(seq_pos + slot)
    tl.store(pos + b, p.to(tl.int64))
    # rules.step_decisions: k = p - 1 is the token whose flag this step decides
    k = p - 1
    dec = tl.where(code == WINDOW, k >= sinks, code == ALWAYS)
    # k % period != 0 (torch's floor modulo and C's truncated one agree on being zero)
    dec = tl.where(code == FORCED, (k % tl.maximum(period, 1)) != 0, dec)
    o_h = tl.arange(0, BLOCK_H)
    tl.store(base + b * H + o_h, tl.zeros([BLOCK_H], tl.int8) + dec.to(tl.int8), mask=o_h < H)
    tl.store(uses + b, (code == THRESHOLD).to(tl.int8))
    # thr [L, B, H] <- thr_slot [L, S_ALL, H] at this row's slot
    o = tl.arange(0, BLOCK)
    m = o < LH
    l_, h_ = o // H, o % H
    t = tl.load(thr_slot + (l_ * S_ALL + slot) * H + h_, mask=m, other=0.0)
    tl.store(thr + (l_ * B + b) * H + h_, t, mask=m)


def step_inputs(ibuf: torch.Tensor, bs: int, seq_pos: torch.Tensor, thr_slot: torch.Tensor, num_kv_heads: int,
                codes: tuple[int, int, int, int]):
    """From the staged inputs ``ibuf`` (int32 [6, maxbs]: ids, slots, inc, rule code, sinks, period; the
    first ``bs`` columns), ``seq_pos`` (int32 [slots]) and ``thr_slot`` (float64 [L, slots, H]):

    Returns ``(pos [bs] int64, base [bs, H] bool, uses_thr [bs, 1] bool, thr [L, bs, H] float64)``,
    as ``seq_pos[slots]``, ``rules.step_decisions(pos, code, sinks, period, H)`` and
    ``thr_slot[:, slots]`` give them. ``codes``: the (WINDOW, ALWAYS, FORCED, THRESHOLD) rule codes.
    """
    assert ibuf.dtype == torch.int32 and ibuf.shape[0] == 6 and ibuf.stride(1) == 1 and 0 < bs <= ibuf.shape[1]
    L, S_all, H = thr_slot.shape
    assert H == num_kv_heads and thr_slot.dtype == torch.float64 and thr_slot.is_contiguous()
    dev = ibuf.device
    pos = torch.empty(bs, dtype=torch.int64, device=dev)
    base = torch.empty(bs, H, dtype=torch.int8, device=dev)
    uses = torch.empty(bs, 1, dtype=torch.int8, device=dev)
    thr = torch.empty(L, bs, H, dtype=torch.float64, device=dev)
    step_inputs_kernel[(bs,)](
        ibuf, ibuf.stride(0), seq_pos, thr_slot, pos, base, uses, thr, bs, S_all, H, L * H, *codes,
        BLOCK_H=triton.next_power_of_2(H), BLOCK=triton.next_power_of_2(L * H), num_warps=1,
    )
    return pos, base.view(torch.bool), uses.view(torch.bool), thr
