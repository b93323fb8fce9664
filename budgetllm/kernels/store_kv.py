"""Store-and-evict: append new tokens to their rows (docs/engine-layout.md, "Appending token p").

Both ops read positions from ``kv.seq_pos`` (device) and never advance it: the engine adds the
number of stored tokens once per step, after the last layer. Pages come from the device allocator
of ``paged_kv.py``; when a row cannot get a page the token (decode) or the rest of the chunk from
the failing wave on (prefill) is dropped, ``alloc_state[1]`` is incremented and ``slot_oom[slot]``
set: the row is then incomplete and the engine must preempt that sequence (``release_rows``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from budgetllm.kernels.paged_kv import PagedKV, as_int8_flags
from budgetllm.kernels.pdl import pdl_args, pdl_enter


@triton.jit
def store_decode_kv_kernel(k_new, v_new, evict_prev, slot_ids, seq_pos, k_pool, v_pool, slot_pos, slot_flag,
                           block_tables, row_lens, ring, free_stack, alloc_state, slot_oom,
                           H, P, MAXP, W1, D, s_kb, s_kh, s_vb, s_vh, s_eb,
                           PAGE: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    store_token(k_new, v_new, evict_prev, slot_ids, seq_pos, k_pool, v_pool, slot_pos, slot_flag, block_tables,
                row_lens, ring, free_stack, alloc_state, slot_oom, tl.program_id(0), tl.program_id(1),
                H, P, MAXP, W1, D, s_kb, s_kh, s_vb, s_vh, s_eb, PAGE, BLOCK_D)


@triton.jit
def store_token(k_new, v_new, evict_prev, slot_ids, seq_pos, k_pool, v_pool, slot_pos, slot_flag, block_tables,
                row_lens, ring, free_stack, alloc_state, slot_oom, i_b, i_h,
                H, P, MAXP, W1, D, s_kb, s_kh, s_vb, s_vh, s_eb, PAGE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Batch row i_b, KV head i_h: the body of ``store_decode_kv_kernel`` (also the tail of the fused
    QKV GEMM of ``kernels/qkv_store.py``: the new K/V and the decision are read through L2, ``.cg``,
    since other programs of that kernel wrote them)."""
    s = tl.load(slot_ids + i_b)
    p = tl.load(seq_pos + s)
    row = s * H + i_h
    n = tl.load(row_lens + row)
    ev = tl.load(evict_prev + i_b * s_eb + i_h, cache_modifier=".cg").to(tl.int8)
    # 1. the decision of token p is the flag of token p-1
    has_prev = p >= 1
    j_prev = tl.load(ring + row * W1 + (p - 1 + W1) % W1, mask=has_prev, other=0)
    has_prev = has_prev & (j_prev >= 0) & (j_prev < n)  # guards rows left incomplete by an overflow
    pg_prev = tl.load(block_tables + row * MAXP + j_prev // PAGE, mask=has_prev, other=-1)
    tl.store(slot_flag + pg_prev * PAGE + j_prev % PAGE, ev, mask=has_prev & (pg_prev >= 0))
    # 2. token p - W1 leaves the window: reuse its slot if flagged
    has_old = p >= W1
    j_old = tl.load(ring + row * W1 + p % W1, mask=has_old, other=0)
    has_old = has_old & (j_old >= 0) & (j_old < n)
    pg_old = tl.load(block_tables + row * MAXP + j_old // PAGE, mask=has_old, other=-1)
    fl_old = tl.load(slot_flag + pg_old * PAGE + j_old % PAGE, mask=has_old & (pg_old >= 0), other=0)
    fl_old = tl.where(W1 == 1, ev, fl_old)  # w = 0: token p-1 leaves now, its flag is in a register
    reuse = has_old & (fl_old != 0)
    idx = tl.where(reuse, j_old, n)
    need_page = (~reuse) & (n % PAGE == 0)
    pb = idx // PAGE
    want = need_page & (pb < MAXP)
    t = tl.atomic_add(alloc_state, 1, mask=want)
    empty = want & (t >= P)
    tl.atomic_add(alloc_state, -1, mask=empty)
    got = want & (t < P)
    new_pg = tl.load(free_stack + t, mask=got, other=-1)
    tl.store(block_tables + row * MAXP + pb, new_pg, mask=got)
    fail = need_page & (~got)
    tl.atomic_add(alloc_state + 1, 1, mask=fail)
    tl.store(slot_oom + s, 1, mask=fail)
    pg = tl.where(need_page, new_pg, tl.load(block_tables + row * MAXP + pb, mask=~need_page, other=-1))
    # 3. write K/V, position, flag 0, ring entry, length
    ok = ~fail
    slot = pg * PAGE + idx % PAGE
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < tl.where(ok, D, 0)  # (scalar & vector bools: interpreter bug, fold into the compare)
    b_k = tl.load(k_new + i_b * s_kb + i_h * s_kh + o_d, mask=m_d, cache_modifier=".cg")
    b_v = tl.load(v_new + i_b * s_vb + i_h * s_vh + o_d, mask=m_d, cache_modifier=".cg")
    tl.store(k_pool + slot.to(tl.int64) * D + o_d, b_k.to(k_pool.dtype.element_ty), mask=m_d)
    tl.store(v_pool + slot.to(tl.int64) * D + o_d, b_v.to(v_pool.dtype.element_ty), mask=m_d)
    tl.store(slot_pos + slot, p, mask=ok)
    tl.store(slot_flag + slot, tl.zeros_like(ev), mask=ok)
    tl.store(ring + row * W1 + p % W1, idx, mask=ok)
    tl.store(row_lens + row, tl.where(ok & (~reuse), n + 1, n))


def store_decode_kv(kv: PagedKV, k_new: torch.Tensor, v_new: torch.Tensor, evict_prev: torch.Tensor,
                    layer: int, slot_ids: torch.Tensor, pdl: bool = False) -> None:
    """Append one token per sequence to its H rows of ``layer`` (decode step).

    Args:
        kv: the cache (updated in place).
        k_new, v_new: ``[B, H, D]`` new keys (post-RoPE) and values, any float dtype (cast to the pool's).
        evict_prev: ``[B, H]`` bool/int8, the decision of the new token = evict flag of the previous one.
        layer: layer index.
        slot_ids: ``[B] int32`` distinct sequence slots; the new token's position is ``kv.seq_pos[slot]``.
        pdl: launch with programmatic dependent launch (``kernels/pdl.py``).
    """
    kv.check()
    B, H, D = k_new.shape
    L, S, H_kv, MAXP = kv.block_tables.shape
    assert H == H_kv and D == kv.head_dim and v_new.shape == (B, H, D)
    assert k_new.stride(-1) == 1 and v_new.stride(-1) == 1
    assert evict_prev.shape == (B, H) and slot_ids.shape == (B,) and slot_ids.dtype == torch.int32
    assert 0 <= layer < L
    if B == 0:
        return
    ev = as_int8_flags(evict_prev).contiguous()
    store_decode_kv_kernel[(B, H)](
        k_new, v_new, ev, slot_ids.contiguous(), kv.seq_pos, kv.k_pool, kv.v_pool, kv.slot_pos, kv.slot_flag,
        kv.block_tables[layer], kv.row_lens[layer], kv.ring[layer], kv.free_stack, kv.alloc_state, kv.slot_oom,
        H, kv.num_pages, MAXP, kv.window + 1, D, k_new.stride(0), k_new.stride(1), v_new.stride(0),
        v_new.stride(1), ev.stride(0), PAGE=kv.page_size, BLOCK_D=triton.next_power_of_2(D), **pdl_args(pdl),
    )


@triton.jit
def store_prefill_meta_kernel(decisions, cu_seqlens, slot_ids, seq_pos, slot_pos, slot_flag, block_tables,
                              row_lens, ring, free_stack, alloc_state, slot_oom, dest,
                              H, P, MAXP, W1, s_dn,
                              PAGE: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per row: destination slot of every chunk token (-1 = not written), ring, lengths, pages, pos/flag.

    Works in waves of W1 tokens: token p of a wave reuses the slot of token p - W1, which is the
    same lane of the previous wave, so a wave needs only the previous wave's registers.
    """
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    s = tl.load(slot_ids + i_b)
    p0 = tl.load(seq_pos + s)
    bos = tl.load(cu_seqlens + i_b)
    n_tok = tl.load(cu_seqlens + i_b + 1) - bos
    row = s * H + i_h
    n = tl.load(row_lens + row)
    dec0 = tl.load(decisions + bos * s_dn + i_h, mask=n_tok > 0, other=0).to(tl.int8)
    # step 1 of the first chunk token: flag of the last old token
    has_prev = (p0 >= 1) & (n_tok > 0)
    j_prev = tl.load(ring + row * W1 + (p0 - 1 + W1) % W1, mask=has_prev, other=0)
    has_prev = has_prev & (j_prev >= 0) & (j_prev < n)
    pg_prev = tl.load(block_tables + row * MAXP + j_prev // PAGE, mask=has_prev, other=-1)
    tl.store(slot_flag + pg_prev * PAGE + j_prev % PAGE, dec0, mask=has_prev & (pg_prev >= 0))
    # lane r holds token q = p0 + r - W1 (leaves the window when token p0 + r arrives)
    o_r = tl.arange(0, BLOCK_W)
    m_r = o_r < W1
    q = p0 + o_r - W1
    m_q = m_r & (q >= 0)
    c_idx = tl.load(ring + row * W1 + (p0 + o_r) % W1, mask=m_q, other=0)
    m_q = m_q & (c_idx >= 0) & (c_idx < n)
    c_pg = tl.load(block_tables + row * MAXP + c_idx // PAGE, mask=m_q, other=-1)
    c_flag = tl.load(slot_flag + c_pg * PAGE + c_idx % PAGE, mask=m_q & (c_pg >= 0), other=0)
    c_flag = tl.where(q == p0 - 1, dec0, c_flag)
    c_flag = tl.where(m_q, c_flag, 0)
    tl.debug_barrier()
    o_k = tl.arange(0, BLOCK_K)
    failed = n < 0  # False, as a scalar tensor
    for w0 in range(0, n_tok, W1):
        i = w0 + o_r
        m = m_r & (i < n_tok)
        reuse = m & (c_flag != 0)
        a = (m & (~reuse)).to(tl.int32)
        cnt = tl.sum(a, 0)
        idx = tl.where(reuse, c_idx, n + tl.cumsum(a, 0) - a)
        have = (n + PAGE - 1) // PAGE
        k = (n + cnt + PAGE - 1) // PAGE - have
        want = (k > 0) & (~failed) & (have + k <= MAXP)
        t = tl.atomic_add(alloc_state, k, mask=want)
        empty = want & (t + k > P)
        tl.atomic_add(alloc_state, -k, mask=empty)
        ok = (~failed) & (have + k <= MAXP) & (~empty)
        got = want & (~empty)
        m_k = o_k < tl.where(got, k, 0)
        b_new = tl.load(free_stack + t + o_k, mask=m_k, other=-1)
        tl.store(block_tables + row * MAXP + have + o_k, b_new, mask=m_k)
        m_ok = m & (o_r < tl.where(ok, BLOCK_W, 0))
        pb = idx // PAGE
        is_new = pb >= have
        pg_new = tl.load(free_stack + t + pb - have, mask=m_ok & is_new, other=-1)
        pg_old = tl.load(block_tables + row * MAXP + pb, mask=m_ok & (~is_new), other=-1)
        pg = tl.where(is_new, pg_new, pg_old)
        # this token's flag: decision of the next chunk token (0 for the last one)
        fl = tl.load(decisions + (bos + i + 1) * s_dn + i_h, mask=m & (i + 1 < n_tok), other=0).to(tl.int8)
        survives = m_ok & ((fl == 0) | (i + W1 >= n_tok))  # else token i + W1 takes the slot
        slot = pg * PAGE + idx % PAGE
        tl.store(dest + (bos + i) * H + i_h, tl.where(survives, slot, -1), mask=m)
        tl.store(slot_pos + slot, p0 + i, mask=survives)
        tl.store(slot_flag + slot, fl, mask=survives)
        tl.store(ring + row * W1 + (p0 + i) % W1, idx, mask=m_ok)
        n = tl.where(ok, n + cnt, n)
        failed = failed | (~ok)
        c_idx = idx
        c_flag = tl.where(m, fl, 0)
        tl.debug_barrier()  # this wave's block-table entries are read by other threads in the next wave
    tl.store(row_lens + row, n)
    tl.atomic_add(alloc_state + 1, 1, mask=failed)
    tl.store(slot_oom + s, 1, mask=failed)


@triton.jit
def store_prefill_copy_kernel(k, v, dest, k_pool, v_pool, N, H, D, s_kn, s_kh, s_vn, s_vh,
                              BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = tl.arange(0, BLOCK_D)
    b_dst = tl.load(dest + o_t * H + i_h, mask=o_t < N, other=-1)
    m = (b_dst >= 0)[:, None] & (o_d < D)[None, :]
    # [BLOCK_T, BLOCK_D]
    b_k = tl.load(k + o_t[:, None] * s_kn + i_h * s_kh + o_d[None, :], mask=m)
    b_v = tl.load(v + o_t[:, None] * s_vn + i_h * s_vh + o_d[None, :], mask=m)
    p_dst = b_dst.to(tl.int64)[:, None] * D + o_d[None, :]
    tl.store(k_pool + p_dst, b_k.to(k_pool.dtype.element_ty), mask=m)
    tl.store(v_pool + p_dst, b_v.to(v_pool.dtype.element_ty), mask=m)


def store_prefill_kv(kv: PagedKV, k: torch.Tensor, v: torch.Tensor, decisions: torch.Tensor, layer: int,
                     slot_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> None:
    """Append a chunk of tokens per sequence to the rows of ``layer`` (prefill / chunked prefill).

    Args:
        kv: the cache (updated in place).
        k, v: ``[N, H, D]`` keys (post-RoPE) and values of all chunks, concatenated.
        decisions: ``[N, H]`` bool/int8; ``decisions[i]`` = decision computed by chunk token i = evict
            flag of token i-1 (for the first chunk token: of the last token already in the row).
        layer: layer index.
        slot_ids: ``[B] int32`` distinct sequence slots; chunk b starts at position ``kv.seq_pos[slot_ids[b]]``.
        cu_seqlens: ``[B+1] int32`` chunk boundaries in N; None means one chunk (B = 1).

    Same result as storing the tokens one by one with ``store_decode_kv``.
    """
    kv.check()
    N, H, D = k.shape
    L, S, H_kv, MAXP = kv.block_tables.shape
    assert H == H_kv and D == kv.head_dim and v.shape == (N, H, D) and decisions.shape == (N, H)
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and 0 <= layer < L
    assert slot_ids.dtype == torch.int32 and slot_ids.dim() == 1
    if cu_seqlens is None:
        assert slot_ids.shape == (1,)
        cu_seqlens = torch.tensor([0, N], dtype=torch.int32, device=k.device)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.shape == (slot_ids.shape[0] + 1,)
    B, W1, PAGE = slot_ids.shape[0], kv.window + 1, kv.page_size
    if N == 0 or B == 0:
        return
    dec = as_int8_flags(decisions).contiguous()
    dest = torch.empty(N, H, dtype=torch.int32, device=k.device)
    BLOCK_W = triton.next_power_of_2(W1)
    store_prefill_meta_kernel[(B, H)](
        dec, cu_seqlens, slot_ids, kv.seq_pos, kv.slot_pos, kv.slot_flag, kv.block_tables[layer],
        kv.row_lens[layer], kv.ring[layer], kv.free_stack, kv.alloc_state, kv.slot_oom, dest,
        H, kv.num_pages, MAXP, W1, dec.stride(0),
        PAGE=PAGE, BLOCK_W=BLOCK_W, BLOCK_K=triton.next_power_of_2(triton.cdiv(BLOCK_W, PAGE) + 1),
    )
    BLOCK_T = 16
    store_prefill_copy_kernel[(triton.cdiv(N, BLOCK_T), H)](
        k, v, dest, kv.k_pool, kv.v_pool, N, H, D, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        BLOCK_T=BLOCK_T, BLOCK_D=triton.next_power_of_2(D),
    )
