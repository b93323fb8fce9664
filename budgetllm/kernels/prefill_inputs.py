"""The layer-independent eviction decisions of a prefill chunk's tokens in one launch.

As torch ops (``engine.rules.step_decisions``: ~11 elementwise kernels, plus the casts of the rule
fields) they ran once per prefill call; here one program per ``BLOCK`` tokens reads the per-token
rule fields in whatever integer dtype they are staged in. The naive twin is
``kernels.reference.prefill_decisions`` (``rules.step_decisions`` transcribed); the rule codes are
arguments (the engine owns them: ``engine/eviction.py``), as in ``kernels/step_inputs.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def prefill_decisions_kernel(pos, code, sinks, period, base, uses, N, H, WINDOW, ALWAYS, FORCED, THRESHOLD,
                             BLOCK: tl.constexpr, BLOCK_H: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    k = tl.load(pos + o, mask=m, other=0).to(tl.int64) - 1  # the token whose flag this token decides
    c = tl.load(code + o, mask=m, other=0).to(tl.int32)
    s = tl.load(sinks + o, mask=m, other=0).to(tl.int64)
    p = tl.maximum(tl.load(period + o, mask=m, other=1).to(tl.int64), 1)
    dec = tl.where(c == WINDOW, k >= s, c == ALWAYS)
    # k % period != 0 (torch's floor modulo and C's truncated one agree on being zero)
    dec = tl.where(c == FORCED, (k % p) != 0, dec)
    o_h = tl.arange(0, BLOCK_H)
    tl.store(base + o[:, None] * H + o_h[None, :], tl.zeros([BLOCK, BLOCK_H], tl.int8) + dec.to(tl.int8)[:, None],
             mask=m[:, None] & (o_h < H)[None, :])
    tl.store(uses + o, (c == THRESHOLD).to(tl.int8), mask=m)


def prefill_decisions(pos: torch.Tensor, code: torch.Tensor, sinks: torch.Tensor, period: torch.Tensor,
                      num_kv_heads: int, codes: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``rules.step_decisions(pos, code, sinks, period, H)`` in one launch: ``(base [N, H] bool,
    uses_thr [N, 1] bool)``. ``pos``/``code``/``sinks``/``period``: ``[N]`` integer tensors (contiguous,
    any int dtype); ``codes``: the (WINDOW, ALWAYS, FORCED, THRESHOLD) rule codes."""
    N, H = pos.shape[0], num_kv_heads
    base = torch.empty(N, H, dtype=torch.int8, device=pos.device)
    uses = torch.empty(N, 1, dtype=torch.int8, device=pos.device)
    if N:
        BLOCK = 256
        prefill_decisions_kernel[(triton.cdiv(N, BLOCK),)](
            pos, code, sinks, period, base, uses, N, H, *codes, BLOCK=BLOCK,
            BLOCK_H=triton.next_power_of_2(H), num_warps=4)
    return base.view(torch.bool), uses.view(torch.bool)
