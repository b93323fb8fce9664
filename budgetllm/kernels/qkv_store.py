"""The first kernel of a small-batch decode layer: norm -> QKV GEMM -> q/k norm, RoPE, DMS decision
-> KV store, in ONE launch (it was three: ``gemv``, ``qkv_rope``, ``store_decode_kv``).

The GEMM part is ``gemv``'s program (``kernels/gemv.py``: RMSNorm prologue, split-K in the launch,
bias epilogue) with the column block narrowed to divide the head size, so each column block lies
inside one head. What follows runs in the tails of the programs, ordered by two levels of acq_rel
arrival counters (``GemvWorkspace.hcnt``, reset by their last arrival: CUDA-graph replays):

1. the program that writes the last column block of head ``j`` (q, k or v head) finishes the head:
   for q and k heads it runs ``qkv_rope``'s body (``rope_head``: q/k norm, borrowed-channel logit,
   RoPE, and for the first q head of a KV group the group's eviction decision);
2. the finishers of group h's first q head (decision), k head and v head arrive on the group's
   counter; the third runs ``store_decode_kv``'s body (``store_token``) for every batch row.

The maths are the very device functions of the three kernels, so the results are bit-identical to
the three-kernel path with the same GEMM plan (tests/kernels/test_qkv_store.py); the naive twin is
``kernels.reference.qkv_store``. Data other programs wrote is read through L2 (``.cg`` loads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from budgetllm.kernels.fused_decoder import rope_head
from budgetllm.kernels.gemv import FMA_ROWS, GemvWorkspace, gemv_plan, gemv_program, m_pad, mode
from budgetllm.kernels.paged_kv import PagedKV, as_int8_flags
from budgetllm.kernels.pdl import pdl_args
from budgetllm.kernels.store_kv import store_token


@triton.jit
def qkv_store_kernel(x, w, bias, nw, y, part, cnt, hcnt, M, N, K, K_SPLIT, eps, s_xm, s_ym,
                     cos, sin, pos, qk_w, q_out, k_out, logits, thr, base, uses_thr, logits_in, dec, ev,
                     Hq, H, G, qk_eps, scale, offset,
                     slot_ids, seq_pos, k_pool, v_pool, slot_pos, slot_flag, block_tables, row_lens, ring,
                     free_stack, alloc_state, slot_oom, P, MAXP, W1,
                     M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                     HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT: tl.constexpr,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, QK_NORM: tl.constexpr, BORROWED: tl.constexpr,
                     DECIDE: tl.constexpr, LOGITS_IN: tl.constexpr, PAGE: tl.constexpr, PDL: tl.constexpr):
    fin = gemv_program(x, w, bias, y, nw, y, part, cnt, M, N, K, K_SPLIT, eps, s_xm, 0, s_ym,
                       M_PAD, BLOCK_N, BLOCK_K, SPLIT_K, True, HAS_BIAS, False, False, False, IEEE, False, DOT,
                       False, PDL)
    if fin:
        tl.debug_barrier()  # every thread's outputs are written before the head counter moves
        i0 = tl.program_id(0) * 0  # a tensor zero: loop indices below become tensors in the interpreter too
        j = tl.program_id(0) * BLOCK_N // D  # the head of this column block (q heads, k heads, v heads)
        a = tl.atomic_add(hcnt + j, 1, sem="acq_rel", scope="gpu")
        if a == D // BLOCK_N - 1:  # head j is complete
            tl.debug_barrier()
            tl.store(hcnt + j, 0)
            if j < Hq + H:
                for r in range(M):
                    rope_head(y, cos, sin, pos, qk_w, q_out, k_out, logits, thr, base, uses_thr, logits_in, dec,
                              i0 + r, j, s_ym, Hq, H, G, qk_eps, scale, offset,
                              D, BLOCK_D, QK_NORM, BORROWED, DECIDE, LOGITS_IN)
            # KV group h is stored once its decision (first q head), k head and v head are finished
            h = tl.where(j < Hq, j // G, tl.where(j < Hq + H, j - Hq, j - Hq - H))
            if (j >= Hq) | (j % G == 0):
                tl.debug_barrier()  # this head's q/k and decision are written before the group counter moves
                g = hcnt + Hq + 2 * H + h
                b = tl.atomic_add(g, 1, sem="acq_rel", scope="gpu")
                if b == 2:
                    tl.debug_barrier()
                    tl.store(g, 0)
                    for r in range(M):
                        store_token(k_out, y + (Hq + H) * D, ev, slot_ids, seq_pos, k_pool, v_pool, slot_pos,
                                    slot_flag, block_tables, row_lens, ring, free_stack, alloc_state, slot_oom,
                                    i0 + r, h, H, P, MAXP, W1, D, H * D, D, s_ym, D, H, PAGE, BLOCK_D)


def head_plan(plan: tuple, D: int) -> tuple:
    """``plan`` with BLOCK_N narrowed to a power of two dividing D (a column block inside one head)."""
    bn = min(plan[0], D & -D)  # D & -D: the largest power of two dividing D
    return (bn, *plan[1:])


def qkv_store(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, norm: tuple[torch.Tensor, float],
              cos: torch.Tensor, sin_signed: torch.Tensor, pos: torch.Tensor, num_q_heads: int, num_kv_heads: int,
              head_dim: int, kv: PagedKV, layer: int, slot_ids: torch.Tensor, evict_base: torch.Tensor,
              qk_norm: torch.Tensor | None = None, eps: float = 1e-6, borrowed: tuple | None = None,
              decide: tuple | None = None, ws: GemvWorkspace | None = None, plan: tuple | None = None,
              pdl: bool = False) -> torch.Tensor:
    """``qkv = gemv(x, w, bias, norm)``, ``qkv_rope(qkv, ...)`` and ``store_decode_kv(kv, k, v, ...)``
    in one launch; returns q ``[M, Hq, D]`` (post-RoPE) for the attention.

    Args:
        x, w, bias, norm: as ``gemv`` (``w`` [(Hq + 2H) * D, K], at most 4 rows: the FMA path).
        cos, sin_signed, pos, num_q_heads, num_kv_heads, head_dim, qk_norm, eps, borrowed, decide:
            as ``qkv_rope`` (``decide``'s threshold per row and KV head of this layer).
        kv, layer, slot_ids: as ``store_decode_kv``.
        evict_base: ``[M, H]`` bool/int8, the new token's decision when ``decide`` is None (no logits).
        ws: the split-K scratch and counters; plan: ``gemv_plan``'s tuple (BLOCK_N is narrowed to
            divide the head size, ``head_plan``); pdl: programmatic dependent launch.
    """
    kv.check()
    M, K = x.shape
    Hq, H, D = num_q_heads, num_kv_heads, head_dim
    N = (Hq + 2 * H) * D
    if M > FMA_ROWS:
        raise ValueError(f"qkv_store takes at most {FMA_ROWS} rows, got {M}")
    assert w.shape == (N, K) and w.is_contiguous() and x.stride(1) == 1 and Hq % H == 0 and D % 2 == 0
    assert pos.shape == (M,) and slot_ids.shape == (M,) and slot_ids.dtype == torch.int32
    assert cos.shape == sin_signed.shape and cos.shape[1] == D and cos.dtype == w.dtype
    assert evict_base.shape == (M, H) and kv.block_tables.shape[2] == H and kv.head_dim == D
    dev = x.device
    ws = ws or GemvWorkspace(dev)
    assert Hq + 3 * H <= ws.hcnt.numel()
    y = torch.empty(M, N, dtype=w.dtype, device=dev)
    q = torch.empty(M, Hq, D, dtype=w.dtype, device=dev)
    k = torch.empty(M, H, D, dtype=w.dtype, device=dev)
    if M == 0:
        return q
    G, scale, offset = (Hq // H, 1.0, 0.0) if borrowed is None else borrowed
    logits = torch.empty(M, H, dtype=torch.float32, device=dev) if borrowed is not None else None
    thr = base = uses = lg_in = dec = None
    if decide is not None:  # the same preparation as qkv_rope's
        thr, base, uses, lg_in = decide
        assert thr.shape in ((M,), (M, H)) and thr.dtype == torch.float64 and base.shape == (M, H)
        assert lg_in is None or borrowed is None, "logits come from the borrowed channel or from logits_in"
        thr = (thr[:, None] if thr.dim() == 1 else thr).expand(M, H).contiguous()
        base, uses = as_int8_flags(base.contiguous()), as_int8_flags(uses.reshape(M).contiguous())
        lg_in = lg_in.contiguous() if lg_in is not None else None
        dec = torch.empty(M, H, dtype=torch.int8, device=dev)
    ev = dec if dec is not None else as_int8_flags(evict_base).contiguous()
    if qk_norm is not None:
        assert qk_norm.shape == (Hq + H, D) and qk_norm.dtype == w.dtype
    bn, bk, split, warps, stages, *red = head_plan(plan or gemv_plan(N, K, dev, M, w.element_size()), D)
    k_split = triton.cdiv(triton.cdiv(K, split), bk) * bk
    split = triton.cdiv(K, k_split)
    nb = triton.cdiv(N, bn)
    if ws.part.numel() < split * nb * 2 * m_pad(M) * bn or ws.cnt.numel() < nb:
        raise ValueError("gemv workspace too small for this shape")

    def _or(t):  # unused pointer arguments (their constexpr branch is compiled out)
        return y if t is None else t

    qkv_store_kernel[(nb, split)](
        x, w, _or(bias), norm[0], y, ws.part, ws.cnt, ws.hcnt, M, N, K, k_split, float(norm[1]), x.stride(0),
        y.stride(0), cos, sin_signed, pos, _or(qk_norm), q, k, _or(logits), _or(thr), _or(base), _or(uses),
        _or(lg_in), _or(dec), ev, Hq, H, G, float(eps), float(scale), float(offset),
        slot_ids.contiguous(), kv.seq_pos, kv.k_pool, kv.v_pool, kv.slot_pos, kv.slot_flag, kv.block_tables[layer],
        kv.row_lens[layer], kv.ring[layer], kv.free_stack, kv.alloc_state, kv.slot_oom, kv.num_pages,
        kv.block_tables.shape[3], kv.window + 1,
        M_PAD=m_pad(M), BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, HAS_BIAS=bias is not None,
        IEEE=w.dtype == torch.float32, DOT=mode(1, red), D=D, BLOCK_D=triton.next_power_of_2(D),
        QK_NORM=qk_norm is not None, BORROWED=borrowed is not None, DECIDE=decide is not None,
        LOGITS_IN=lg_in is not None, PAGE=kv.page_size, num_warps=warps, num_stages=stages,
        enable_fp_fusion=False, **pdl_args(pdl),
    )
    return q
