"""Chunked-prefill attention under the DMS mask, over the chunk plus the sequence's old paged rows.

Flash-attention style (online softmax, exp2), one program per (block of BLOCK_M chunk tokens, query
head). It runs BEFORE the chunk is stored (docs/engine-layout.md, "Attention"). Chunk keys farther
than the window from every query of the block are read from a per-head list of the unflagged chunk
tokens (``kernels/compact.py``), so the far part costs (1 - evicted fraction) of dense attention.
An old-row tile whose entries are all flagged and out of the window is skipped after loading only
its positions and flags.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from budgetllm.kernels.compact import compact_unflagged
from budgetllm.kernels.online_softmax import online_softmax_step as _online_softmax
from budgetllm.kernels.paged_kv import PagedKV, as_int8_flags

_LOG2E = 1.4426950408889634


@triton.jit
def prefill_attention_kernel(q, k, v, decisions, k_pool, v_pool, slot_pos, slot_flag, block_tables, row_lens,
                             seq_pos, slot_ids, cu_seqlens, keep_idx, keep_cnt, out, sm_scale, H, G, D, MAXP, W,
                             s_qn, s_qh, s_kn, s_kh, s_vn, s_vh, s_dn, s_on, s_oh,
                             PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    i_m, i_b, i_hq = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1), tl.program_id(2)  # long first
    i_h = i_hq // G
    bos = tl.load(cu_seqlens + i_b)
    n_tok = tl.load(cu_seqlens + i_b + 1) - bos
    if i_m * BLOCK_M >= n_tok:
        return
    s = tl.load(slot_ids + i_b)
    p0 = tl.load(seq_pos + s)
    row = s * H + i_h
    n_old = tl.load(row_lens + row)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < n_tok
    m_d = o_d < D
    # [BLOCK_M, BLOCK_D]
    b_q = tl.load(q + (bos + o_m)[:, None] * s_qn + i_hq * s_qh + o_d[None, :],
                  mask=m_m[:, None] & m_d[None, :], other=0.0)
    b_m = tl.full([BLOCK_M], -1e30, tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    i_last = tl.minimum((i_m + 1) * BLOCK_M, n_tok) - 1
    dec0 = tl.load(decisions + bos * s_dn + i_h).to(tl.int32)  # flag of the last old token
    # (a) old row entries: visible if pos <= p and (p - pos <= W or not flagged)
    for start in range(0, n_old, BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N)
        m_n = o_n < n_old
        b_pg = tl.load(block_tables + row * MAXP + o_n // PAGE, mask=m_n, other=0)
        b_slot = b_pg.to(tl.int64) * PAGE + o_n % PAGE
        b_pos = tl.load(slot_pos + b_slot, mask=m_n, other=0)
        b_fl = tl.load(slot_flag + b_slot, mask=m_n, other=0).to(tl.int32)
        b_fl = tl.where(b_pos == p0 - 1, dec0, b_fl)
        live = m_n & ((b_fl == 0) | (p0 + i_m * BLOCK_M - b_pos <= W))
        if tl.max(live.to(tl.int32), 0) > 0:
            m_kv = m_n[:, None] & m_d[None, :]
            b_k = tl.load(k_pool + b_slot[:, None] * D + o_d[None, :], mask=m_kv, other=0.0)
            b_v = tl.load(v_pool + b_slot[:, None] * D + o_d[None, :], mask=m_kv, other=0.0)
            dist = (p0 + o_m)[:, None] - b_pos[None, :]
            keep = m_n[None, :] & (dist >= 0) & ((dist <= W) | (b_fl == 0)[None, :])
            b_m, b_l, b_acc = _online_softmax(b_q, b_k, b_v, keep, b_m, b_l, b_acc, sm_scale, IEEE)
    # (b) chunk tokens j <= i: visible if i - j <= W or not flag(j) (= decision of token j+1).
    # Far keys j < lim = i_first - W: only the unflagged ones are visible, and to every query of the
    # block, so they come from the compacted list keep_idx (no mask). Near keys [lim, i_last]: full mask.
    lim = i_m * BLOCK_M - W
    n_far = tl.load(keep_cnt + (bos + tl.maximum(lim, 0)) * H + i_h)  # the count restarts at bos
    for start in range(0, n_far, BLOCK_N):
        o_c = start + tl.arange(0, BLOCK_N)
        m_c = o_c < n_far
        b_j = tl.load(keep_idx + (bos + o_c) * H + i_h, mask=m_c, other=0)
        m_kv = m_c[:, None] & m_d[None, :]
        b_k = tl.load(k + b_j[:, None] * s_kn + i_h * s_kh + o_d[None, :], mask=m_kv, other=0.0)
        b_v = tl.load(v + b_j[:, None] * s_vn + i_h * s_vh + o_d[None, :], mask=m_kv, other=0.0)
        b_m, b_l, b_acc = _online_softmax(b_q, b_k, b_v, m_c[None, :], b_m, b_l, b_acc, sm_scale, IEEE)
    for start in range(tl.maximum(lim, 0), i_last + 1, BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N)
        m_n = o_n <= i_last
        b_fl = tl.load(decisions + (bos + o_n + 1) * s_dn + i_h, mask=m_n & (o_n + 1 < n_tok), other=0).to(tl.int32)
        m_kv = m_n[:, None] & m_d[None, :]
        b_k = tl.load(k + (bos + o_n)[:, None] * s_kn + i_h * s_kh + o_d[None, :], mask=m_kv, other=0.0)
        b_v = tl.load(v + (bos + o_n)[:, None] * s_vn + i_h * s_vh + o_d[None, :], mask=m_kv, other=0.0)
        dist = o_m[:, None] - o_n[None, :]
        keep = m_n[None, :] & (dist >= 0) & ((dist <= W) | (b_fl == 0)[None, :])
        b_m, b_l, b_acc = _online_softmax(b_q, b_k, b_v, keep, b_m, b_l, b_acc, sm_scale, IEEE)
    b_o = b_acc / tl.where(b_l > 0, b_l, 1.0)[:, None]
    tl.store(out + (bos + o_m)[:, None] * s_on + i_hq * s_oh + o_d[None, :], b_o.to(out.dtype.element_ty),
             mask=m_m[:, None] & m_d[None, :])


def dms_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decisions: torch.Tensor, kv: PagedKV,
                          layer: int, slot_ids: torch.Tensor, scale: float, cu_seqlens: torch.Tensor | None = None,
                          max_seqlen: int | None = None, block_m: int = 128, block_n: int = 64,
                          num_warps: int | None = None, num_stages: int = 2,
                          keep: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention of a prefill chunk (per sequence) over the old rows plus the chunk, DMS-masked.

    Args:
        q: ``[N, Hq, D]`` chunk queries (post-RoPE), all sequences concatenated.
        k, v: ``[N, H, D]`` chunk keys (post-RoPE) and values (not yet stored).
        decisions: ``[N, H]`` bool/int8, UNSHIFTED: ``decisions[i]`` = decision computed by chunk token i
            = evict flag of token i-1. So flag(chunk token j) = ``decisions[j+1]`` (0 for the chunk's
            last token) and the flag of the last old token is ``decisions[0]``. Same array as
            ``store_prefill_kv`` takes.
        kv: the cache; rows ``(layer, slot_ids[b], h)``; chunk b starts at ``kv.seq_pos[slot_ids[b]]``
            (p0 = 0 with empty rows is a plain first prefill).
        layer: layer index.
        slot_ids: ``[B] int32`` sequence slots.
        scale: softmax scale.
        cu_seqlens: ``[B+1] int32`` chunk boundaries; None means one chunk (B = 1).
        max_seqlen: longest chunk (host int, sizes the grid); None means N.
        block_m, block_n: tile sizes (>= 16); num_warps defaults to 8 for block_m >= 128, else 4.
            (sm_90, D=128: 128/64/8 warps compiles to 223 registers, no spills.)
        keep: ``compact_unflagged(decisions, cu_seqlens)`` computed by the caller, who can reuse it
            for every layer when the decisions do not depend on the layer (no threshold rows).

    Returns:
        ``[N, Hq, D]`` in q's dtype; fp32 accumulation (fp32 inputs: IEEE dot products).
    """
    kv.check()
    N, Hq, D = q.shape
    L, S, H, MAXP = kv.block_tables.shape
    assert k.shape == (N, H, D) and v.shape == (N, H, D) and decisions.shape == (N, H) and Hq % H == 0
    assert q.dtype == k.dtype == v.dtype == kv.k_pool.dtype and D == kv.head_dim and 0 <= layer < L
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    assert slot_ids.dtype == torch.int32 and slot_ids.dim() == 1
    if cu_seqlens is None:
        assert slot_ids.shape == (1,)
        cu_seqlens = torch.tensor([0, N], dtype=torch.int32, device=q.device)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.shape == (slot_ids.shape[0] + 1,)
    B = slot_ids.shape[0]
    dec = as_int8_flags(decisions).contiguous()
    out = torch.empty_like(q)
    max_seqlen = N if max_seqlen is None else max_seqlen
    if N == 0 or max_seqlen == 0:
        return out
    keep_idx, keep_cnt = keep if keep is not None else compact_unflagged(dec, cu_seqlens)
    prefill_attention_kernel[(triton.cdiv(max_seqlen, block_m), B, Hq)](
        q, k, v, dec, kv.k_pool, kv.v_pool, kv.slot_pos, kv.slot_flag, kv.block_tables[layer], kv.row_lens[layer],
        kv.seq_pos, slot_ids.contiguous(), cu_seqlens, keep_idx, keep_cnt, out, scale * _LOG2E, H, Hq // H, D, MAXP, kv.window,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), dec.stride(0),
        out.stride(0), out.stride(1),
        PAGE=kv.page_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D),
        IEEE=q.dtype == torch.float32, num_warps=num_warps or (8 if block_m >= 128 else 4), num_stages=num_stages,
    )
    return out
