"""Paged decode attention over rows of per-(sequence, layer, KV head) length, read from device memory.

One program per (sequence, KV head, split): the G query heads of the group share the row, so the
K/V tile is loaded once and multiplied with the [G_PAD, D] query tile (tl.dot, G padded to 16).
With num_splits > 1 each program covers a contiguous range of the row and a second kernel
combines the partial (max, sum, out), or (``reduce_cnt``) the last program of each row does, in the
same launch. No host reads: CUDA-graph friendly for a fixed num_splits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from budgetllm.kernels.online_softmax import online_softmax_step
from budgetllm.kernels.paged_kv import PagedKV
from budgetllm.kernels.pdl import pdl_args, pdl_enter

_LOG2E = 1.4426950408889634


@triton.jit
def decode_attention_kernel(q, k_pool, v_pool, block_tables, row_lens, slot_ids, out, part_o, part_ml, cnt,
                            sm_scale, H, G, D, MAXP, NS, NSP, s_qb, s_qh, s_ob, s_oh,
                            PAGE: tl.constexpr, G_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            SPLIT: tl.constexpr, IEEE: tl.constexpr, BALANCE: tl.constexpr, H_PAD: tl.constexpr,
                            FUSE: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    i_b, i_h, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    s = tl.load(slot_ids + i_b)
    if BALANCE:  # the sequence's H * NS programs are shared out over its heads by row length
        p = i_h * NS + i_s
        o_h = tl.arange(0, H_PAD)
        b_n, b_sp = _split_plan(row_lens, s, H, NS, o_h, H_PAD, BLOCK_N)
        incl = tl.cumsum(b_sp, 0)
        i_h = tl.sum((incl <= p).to(tl.int32), 0)
        if i_h >= H:
            return  # a spare program: the plan uses fewer than H * NS
        i_s = p - tl.sum(tl.where(o_h == i_h, incl - b_sp, 0), 0)
        ns_h = tl.sum(tl.where(o_h == i_h, b_sp, 0), 0)
    else:
        ns_h = NS
    row = s * H + i_h
    n = tl.load(row_lens + row)
    chunk = tl.cdiv(tl.cdiv(n, ns_h), BLOCK_N) * BLOCK_N
    lo = i_s * chunk
    hi = tl.minimum(lo + chunk, n)
    o_g = tl.arange(0, G_PAD)
    o_d = tl.arange(0, BLOCK_D)
    m_g = o_g < G
    m_d = o_d < D
    # [G_PAD, BLOCK_D]
    b_q = tl.load(q + i_b * s_qb + (i_h * G + o_g)[:, None] * s_qh + o_d[None, :],
                  mask=m_g[:, None] & m_d[None, :], other=0.0)
    b_m = tl.full([G_PAD], -1e30, tl.float32)
    b_l = tl.zeros([G_PAD], tl.float32)
    b_acc = tl.zeros([G_PAD, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N)
        m_n = o_n < hi
        b_pg = tl.load(block_tables + row * MAXP + o_n // PAGE, mask=m_n, other=0)
        p_kv = (b_pg.to(tl.int64) * PAGE + o_n % PAGE)[:, None] * D + o_d[None, :]
        m_kv = m_n[:, None] & m_d[None, :]
        # [BLOCK_N, BLOCK_D]
        b_k = tl.load(k_pool + p_kv, mask=m_kv, other=0.0)
        b_v = tl.load(v_pool + p_kv, mask=m_kv, other=0.0)
        # [G_PAD, BLOCK_N]
        b_m, b_l, b_acc = online_softmax_step(b_q, b_k, b_v, m_n[None, :], b_m, b_l, b_acc, sm_scale, IEEE)
    m_out = m_g[:, None] & m_d[None, :]
    if SPLIT:
        # partials: o [B, Hq, NSP, D] (unnormalised), ml [B, Hq, NSP, 2] (max in log2 units, sum)
        hq = i_h * G + o_g
        base = (i_b * H * G + hq) * NSP + i_s
        tl.store(part_o + base[:, None] * D + o_d[None, :], b_acc, mask=m_out)
        tl.store(part_ml + base * 2, b_m, mask=m_g)
        tl.store(part_ml + base * 2 + 1, b_l, mask=m_g)
        if FUSE:  # the last of the row's ns_h programs combines its G heads (the reduce kernel's work)
            tl.debug_barrier()  # every thread's partial is written before the counter moves
            c = cnt + i_b * H + i_h
            arrived = tl.atomic_add(c, 1, sem="acq_rel", scope="gpu")
            if arrived == ns_h - 1:
                tl.debug_barrier()
                tl.store(c, 0)  # ready for the next call (CUDA-graph replays)
                for g in range(G):
                    reduce_head(part_o, part_ml, out, i_b, i_h * G + g, ns_h, n, H * G, D, NSP, s_ob, s_oh,
                                BLOCK_S, BLOCK_D, BLOCK_N)
    else:
        b_o = b_acc / tl.where(b_l > 0, b_l, 1.0)[:, None]
        tl.store(out + i_b * s_ob + (i_h * G + o_g)[:, None] * s_oh + o_d[None, :],
                 b_o.to(out.dtype.element_ty), mask=m_out)


@triton.jit
def _split_plan(row_lens, s, H, NS, o_h, H_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Splits per head of sequence slot s when its H * NS programs are shared by row length:
    1 + (NS - 1) * H * n_h // sum(n) (sums to at most H * NS), at most one per BLOCK_N entries."""
    b_n = tl.load(row_lens + s * H + o_h, mask=o_h < H, other=0)
    tot = tl.maximum(tl.sum(b_n, 0), 1)
    b_sp = 1 + ((NS - 1) * H * b_n.to(tl.int64) // tot).to(tl.int32)
    b_sp = tl.minimum(b_sp, tl.maximum(tl.cdiv(b_n, BLOCK_N), 1))
    return b_n, tl.where(o_h < H, b_sp, 0)


@triton.jit
def decode_reduce_kernel(part_o, part_ml, out, slot_ids, row_lens, Hq, H, G, D, NS, NSP, s_ob, s_oh,
                         BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BALANCE: tl.constexpr,
                         H_PAD: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    i_b, i_hq = tl.program_id(0), tl.program_id(1)
    if BALANCE:
        o_h = tl.arange(0, H_PAD)
        b_n, b_sp = _split_plan(row_lens, tl.load(slot_ids + i_b), H, NS, o_h, H_PAD, BLOCK_N)
        ns = tl.sum(tl.where(o_h == i_hq // G, b_sp, 0), 0)
    else:
        ns = NS
    n = tl.load(row_lens + tl.load(slot_ids + i_b) * H + i_hq // G)
    reduce_head(part_o, part_ml, out, i_b, i_hq, ns, n, Hq, D, NSP, s_ob, s_oh, BLOCK_S, BLOCK_D, BLOCK_N)


@triton.jit(noinline=True)
def reduce_head(part_o, part_ml, out, i_b, i_hq, ns, n, Hq, D, NSP, s_ob, s_oh,
                BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Combine the partials (max, sum, out) of query head i_hq of batch row i_b, whose row (length n)
    was cut into ns splits; loads through L2 (``.cg``): in the fused kernel other programs wrote them.
    A device function of its own (``noinline``), so the reduce kernel and the attention kernel's
    in-kernel reduce run the same code: inlined into the bf16 attention kernel, its tiles shared the
    attention's index tensors and took the layout of the bf16 K/V tile (a thread holding 8 columns,
    a warp 2 rows, not 4 and 1): another fp32 summation tree over the splits, whose outputs came out
    one bf16 rounding step off the reduce kernel's now and then (bench/NOTES.md v5).
    Splits past the row's end (their partial is max -1e30, sum 0, out 0: what a masked load gives)
    are not read, so a short row in a long-capacity plan reads only its used partials."""
    o_s = tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    chunk = tl.cdiv(tl.cdiv(n, ns), BLOCK_N) * BLOCK_N  # as the attention programs cut the row
    m_s = o_s < tl.minimum(ns, tl.cdiv(n, tl.maximum(chunk, 1)))
    base = (i_b * Hq + i_hq) * NSP + o_s
    b_m = tl.load(part_ml + base * 2, mask=m_s, other=-1e30, cache_modifier=".cg")
    b_l = tl.load(part_ml + base * 2 + 1, mask=m_s, other=0.0, cache_modifier=".cg")
    # [BLOCK_S, BLOCK_D]
    b_o = tl.load(part_o + base[:, None] * D + o_d[None, :], mask=m_s[:, None] & (o_d < D)[None, :], other=0.0,
                  cache_modifier=".cg")
    m_all = tl.max(b_m, 0)
    w = tl.math.exp2(b_m - m_all)
    l_all = tl.sum(b_l * w, 0)
    o = tl.sum(b_o * w[:, None], 0) / tl.where(l_all > 0, l_all, 1.0)
    tl.store(out + i_b * s_ob + i_hq * s_oh + o_d, o.to(out.dtype.element_ty), mask=o_d < D)


def default_num_splits(batch: int, num_kv_heads: int, max_row_len: int, device: torch.device) -> int:
    """Host-only heuristic (no length reads): about 2 programs per SM, at least 256 tokens per split."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    ns = triton.cdiv(2 * sms, batch * num_kv_heads)
    return max(1, min(ns, triton.cdiv(max_row_len, 256), 64))


def paged_decode_attention(q: torch.Tensor, kv: PagedKV, layer: int, slot_ids: torch.Tensor, scale: float,
                           num_splits: int | None = None, block_n: int | None = None, balanced: bool = False,
                           pdl: bool = False, reduce_cnt: torch.Tensor | None = None) -> torch.Tensor:
    """Decode attention of one query token per sequence over its paged rows.

    Args:
        q: ``[B, Hq, D]`` queries (post-RoPE); query heads ``h*G .. h*G+G-1`` use KV head h (G = Hq / H).
        kv: the cache; rows ``(layer, slot_ids[b], h)`` of length ``kv.row_lens[layer, slot_ids[b], h]``.
        layer: layer index.
        slot_ids: ``[B] int32`` sequence slots.
        scale: softmax scale (usually D ** -0.5).
        num_splits: split-K factor (fixed per call, graph friendly); None picks one from shapes only.
        block_n: entries per tile (a multiple of PAGE or a divisor of it); default 64.
        balanced: share a sequence's ``H * num_splits`` programs out over its KV heads in proportion
            to their row lengths (uneven DMS rows: the longest head no longer sets the time), read on
            the device; otherwise every head gets ``num_splits`` programs.
        pdl: launch with programmatic dependent launch (``kernels/pdl.py``).
        reduce_cnt: int32 zeros, at least ``B * H`` (left zero after each call): with splits, the last
            program of each (sequence, KV head) combines the partials of its G query heads inside the
            same launch (an acq_rel arrival counter; ``reduce_head``, the reduce kernel's own code: the
            same sums, bit for bit);
            None: a second kernel combines them.

    Returns:
        ``[B, Hq, D]`` in q's dtype; rows of length 0 give zeros. Accumulation in fp32; fp32 inputs
        use IEEE dot products (no tf32).
    """
    kv.check()
    B, Hq, D = q.shape
    L, S, H, MAXP = kv.block_tables.shape
    assert Hq % H == 0 and D == kv.head_dim and q.stride(-1) == 1 and 0 <= layer < L
    assert q.dtype == kv.k_pool.dtype, f"q is {q.dtype}, the pool {kv.k_pool.dtype}"
    assert slot_ids.shape == (B,) and slot_ids.dtype == torch.int32 and slot_ids.device == q.device
    G = Hq // H
    if num_splits is None:
        num_splits = default_num_splits(B, H, MAXP * kv.page_size, q.device)
    block_n = block_n or 64
    out = torch.empty_like(q)
    if B == 0:
        return out
    split = num_splits > 1
    balanced = balanced and split and H > 1
    nsp = H * num_splits if balanced else num_splits  # partial slots per query head
    part_o = torch.empty(B, Hq, nsp, D, dtype=torch.float32, device=q.device) if split else out
    part_ml = torch.empty(B, Hq, nsp, 2, dtype=torch.float32, device=q.device) if split else out
    BLOCK_D, H_PAD = triton.next_power_of_2(D), triton.next_power_of_2(H)
    slot_ids, row_lens = slot_ids.contiguous(), kv.row_lens[layer]
    fuse = split and reduce_cnt is not None
    if fuse:
        assert reduce_cnt.dtype == torch.int32 and reduce_cnt.numel() >= B * H and reduce_cnt.device == q.device
    decode_attention_kernel[(B, H, num_splits)](
        q, kv.k_pool, kv.v_pool, kv.block_tables[layer], row_lens, slot_ids, out, part_o,
        part_ml, reduce_cnt if fuse else slot_ids, scale * _LOG2E, H, G, D, MAXP, num_splits, nsp, q.stride(0),
        q.stride(1), out.stride(0), out.stride(1), PAGE=kv.page_size, G_PAD=max(16, triton.next_power_of_2(G)),
        BLOCK_N=block_n, BLOCK_D=BLOCK_D, SPLIT=split, IEEE=q.dtype == torch.float32, BALANCE=balanced, H_PAD=H_PAD,
        FUSE=fuse, BLOCK_S=triton.next_power_of_2(nsp), num_warps=4, **pdl_args(pdl),
    )
    if split and not fuse:
        decode_reduce_kernel[(B, Hq)](
            part_o, part_ml, out, slot_ids, row_lens, Hq, H, G, D, num_splits, nsp, out.stride(0), out.stride(1),
            BLOCK_S=triton.next_power_of_2(nsp), BLOCK_D=BLOCK_D, BALANCE=balanced, H_PAD=H_PAD, BLOCK_N=block_n,
            **pdl_args(pdl),
        )
    return out
