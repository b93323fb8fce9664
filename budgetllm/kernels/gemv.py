"""Skinny GEMM (M <= 16 rows) of the decode step, with the neighbouring work of a decoder layer fused in.

At small batch a step reads every weight once with almost no arithmetic per byte: a layer costs its
weight bytes over bandwidth plus a launch and a tail per kernel. ``gemv`` streams ``W [N, K]`` once in
``[BLOCK_N, BLOCK_K]`` tiles over ``(N / BLOCK_N, SPLIT_K)`` programs and fuses: prologue ``norm`` (HF
RMSNorm of the raw residual stream, each program computing the row's rstd); epilogue ``bias``,
``residual`` (torch's roundings of ``F.linear`` then ``+``), ``glu`` (``W = [gate; up]`` ->
``silu(gate) * up`` as ``silu_mul`` rounds it; gate and up rows in separate programs that meet in the
split-K partials, ``GLU_PAIRS``) and ``out_f32``; split-K in ONE launch (fp32 partials, the last
program of a column block, an acq_rel counter, sums them in a fixed order and resets the counter).
Up to 4 rows: fp32 FMAs into a ``[rows, BLOCK_N, BLOCK_K]`` accumulator reduced once (or, plan entry
``red``, a ``[rows, BLOCK_N]`` one reduced every iteration: fewer registers); 5-16 rows: ``tl.dot`` on
a 16-row tile. Results equal the torch ops up to the K-sum order (twin: ``reference.gemv``). ``pdl``:
programmatic dependent launch (Hopper), the first weight tile loaded before waiting on the previous
kernel. ``gemv_program`` is also the GEMM of ``kernels/qkv_store.py``. The launch plan (tile sizes,
split-K, warps, stages, rows of the tile) is chosen by ``kernels/gemv_plans.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from budgetllm.kernels.fused_decoder import _accurate_exp
from budgetllm.kernels.gemv_plans import FMA_ROWS, MAX_ROWS, GemvPlan, gemv_plan, m_pad, mode, plan_for
from budgetllm.kernels.pdl import HAS_PDL, gdc_launch_dependents, gdc_wait, pdl_args

# FMA_ROWS, MAX_ROWS, gemv_plan, m_pad, mode, plan_for: the launch plan (kernels/gemv_plans.py), re-exported
__all__ = ["FMA_ROWS", "GLU_PAIRS", "HAS_PDL", "MAX_ROWS", "GemvPlan", "GemvWorkspace", "gemv", "gemv_plan", "m_pad",
           "mode", "plan_for"]

GLU_PAIRS = True  # gemv's glu_pairs: 1.5B gate/up 23.2 vs 25.1 us on the H200 (results/decode_floor-run3-h200.json)


@triton.jit
def _epilogue(acc, acc2, bias, res, y, o_m, o_n, m_m, m_n, s_rm, s_ym, N,
              HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, GLU: tl.constexpr, OUT_F32: tl.constexpr,
              ACCURATE_EXP: tl.constexpr, dt: tl.constexpr):
    """acc [M_PAD, BLOCK_N] fp32 -> y, with torch's roundings to the dtype between ops."""
    m_y = m_m[:, None] & m_n[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    out = acc.to(dt).to(tl.float32)
    if GLU:
        if ACCURATE_EXP:
            e = libdevice.exp(-out)
        else:
            e = tl.exp(-out)
        up = acc2.to(dt).to(tl.float32)
        out = (tl.math.div_rn(out, 1.0 + e).to(dt).to(tl.float32) * up).to(dt).to(tl.float32)
    if HAS_RES:
        r = tl.load(res + o_m[:, None] * s_rm + o_n[None, :], mask=m_y, other=0.0).to(tl.float32)
        out = (out + r).to(dt).to(tl.float32)
    if OUT_F32:
        tl.store(y + o_m[:, None] * s_ym + o_n[None, :], out, mask=m_y)
    else:
        tl.store(y + o_m[:, None] * s_ym + o_n[None, :], out.to(dt), mask=m_y)


@triton.jit
def _x_tile(x, nw, rstd, o_m, m_m, o_k, m_k, s_xm, NORM: tl.constexpr, dt: tl.constexpr):
    """x[:, o_k] as the GEMM operand: HF RMSNorm's two roundings when NORM ((x * rstd) to the dtype,
    then * weight in the dtype), else x cast to the dtype."""
    b_x = tl.load(x + o_m[:, None] * s_xm + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
    if NORM:
        b_nw = tl.load(nw + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_x = ((b_x.to(tl.float32) * rstd[:, None]).to(dt).to(tl.float32) * b_nw[None, :]).to(dt)
    return b_x.to(dt)


@triton.jit
def _mac(acc, b_x, b_w, DOT: tl.constexpr, IEEE: tl.constexpr):
    """acc += b_x @ b_w.T: (DOT 1) a 16-row tl.dot; fp32 FMAs into (DOT 0) a [M_PAD, BLOCK_N, BLOCK_K]
    accumulator reduced after the loop, or (DOT 2, ``red``) a [M_PAD, BLOCK_N] one reduced every iteration."""
    if DOT == 1:
        if IEEE:
            acc += tl.dot(b_x, tl.trans(b_w), input_precision="ieee")
        else:
            acc += tl.dot(b_x, tl.trans(b_w))
    elif DOT == 2:
        acc += tl.sum(b_x.to(tl.float32)[:, None, :] * b_w.to(tl.float32)[None, :, :], 2)
    else:
        acc += b_x.to(tl.float32)[:, None, :] * b_w.to(tl.float32)[None, :, :]
    return acc


@triton.jit
def gemv_kernel(x, w, bias, res, nw, y, part, cnt, M, N, K, K_SPLIT, eps, s_xm, s_rm, s_ym,
                M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, GLU: tl.constexpr,
                OUT_F32: tl.constexpr, IEEE: tl.constexpr, ACCURATE_EXP: tl.constexpr, DOT: tl.constexpr,
                PAIR: tl.constexpr, PDL: tl.constexpr):
    gemv_program(x, w, bias, res, nw, y, part, cnt, M, N, K, K_SPLIT, eps, s_xm, s_rm, s_ym,
                 M_PAD, BLOCK_N, BLOCK_K, SPLIT_K, NORM, HAS_BIAS, HAS_RES, GLU, OUT_F32, IEEE, ACCURATE_EXP, DOT,
                 PAIR, PDL)


@triton.jit
def gemv_program(x, w, bias, res, nw, y, part, cnt, M, N, K, K_SPLIT, eps, s_xm, s_rm, s_ym,
                 M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                 NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, GLU: tl.constexpr,
                 OUT_F32: tl.constexpr, IEEE: tl.constexpr, ACCURATE_EXP: tl.constexpr, DOT: tl.constexpr,
                 PAIR: tl.constexpr, PDL: tl.constexpr):
    """One program of ``gemv_kernel``; returns whether it wrote its column block's outputs (without
    split-K every program does; with it, the last to arrive): ``kernels/qkv_store.py`` goes on from there."""
    i_n, i_k = tl.program_id(0), tl.program_id(1)
    if PDL:
        gdc_launch_dependents()
    dt = w.dtype.element_ty
    NB = tl.cdiv(N, BLOCK_N)  # output column blocks
    half = 0  # PAIR (GLU): programs NB.. stream the up rows; both halves meet in the partials
    if PAIR:
        half = i_n // NB
        i_n = i_n % NB
    o_m = tl.arange(0, M_PAD)
    m_m = o_m < M
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    p_w = w + (o_n + half * N).to(tl.int64)[:, None] * K
    k_lo = i_k * K_SPLIT
    k_hi = tl.minimum(k_lo + K_SPLIT, K)
    # the first weight tile does not depend on the previous kernel: load it before waiting for it
    o_k = k_lo + tl.arange(0, BLOCK_K)
    m_k = o_k < k_hi
    m_w = m_n[:, None] & m_k[None, :]
    b_w = tl.load(p_w + o_k[None, :], mask=m_w, other=0.0)
    b_w2 = b_w
    if GLU and not PAIR:  # the up rows sit N rows below the gate rows
        b_w2 = tl.load(p_w + N * K + o_k[None, :], mask=m_w, other=0.0)
    if PDL:
        gdc_wait()  # everything below may read what the previous kernel wrote
    rstd = tl.zeros([M_PAD], tl.float32)
    if NORM:  # rstd of each row of x over all K (as _rstd: IEEE mean, then rsqrt)
        ss = tl.zeros([M_PAD], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            o_k2 = k0 + tl.arange(0, BLOCK_K)
            b_x = tl.load(x + o_m[:, None] * s_xm + o_k2[None, :], mask=m_m[:, None] & (o_k2 < K)[None, :],
                          other=0.0).to(tl.float32)
            ss += tl.sum(b_x * b_x, 1)
        rstd = tl.math.rsqrt(tl.math.div_rn(ss, K * 1.0) + eps)
    if DOT != 0:
        acc = tl.zeros([M_PAD, BLOCK_N], tl.float32)
        acc2 = tl.zeros([M_PAD, BLOCK_N], tl.float32)
    else:
        acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], tl.float32)
        acc2 = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], tl.float32)
    b_x = _x_tile(x, nw, rstd, o_m, m_m, o_k, m_k, s_xm, NORM, dt)
    acc = _mac(acc, b_x, b_w, DOT, IEEE)
    if GLU and not PAIR:
        acc2 = _mac(acc2, b_x, b_w2, DOT, IEEE)
    for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < k_hi
        m_w = m_n[:, None] & m_k[None, :]
        b_x = _x_tile(x, nw, rstd, o_m, m_m, o_k, m_k, s_xm, NORM, dt)
        acc = _mac(acc, b_x, tl.load(p_w + o_k[None, :], mask=m_w, other=0.0), DOT, IEEE)
        if GLU and not PAIR:
            acc2 = _mac(acc2, b_x, tl.load(p_w + N * K + o_k[None, :], mask=m_w, other=0.0), DOT, IEEE)
    if DOT == 0:
        acc = tl.sum(acc, 2)
        acc2 = tl.sum(acc2, 2)
    if SPLIT_K == 1 and not PAIR:
        _epilogue(acc, acc2, bias, res, y, o_m, o_n, m_m, m_n, s_rm, s_ym, N,
                  HAS_BIAS, HAS_RES, GLU, OUT_F32, ACCURATE_EXP, dt)
        fin = i_k == 0
    else:
        # partials [SPLIT_K, NB, 2 (gate, up), M_PAD, BLOCK_N] fp32
        o_t = tl.arange(0, BLOCK_N)
        tile = o_m[:, None] * BLOCK_N + o_t[None, :]
        base = (i_k * NB + i_n) * 2 * M_PAD * BLOCK_N
        if PAIR:
            tl.store(part + base + half * M_PAD * BLOCK_N + tile, acc)
        else:
            tl.store(part + base + tile, acc)
            if GLU:
                tl.store(part + base + M_PAD * BLOCK_N + tile, acc2)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        arrived = tl.atomic_add(cnt + i_n, 1, sem="acq_rel", scope="gpu")
        fin = arrived == SPLIT_K * (1 + PAIR) - 1
        if fin:  # the last program of this column block reduces, in a fixed order
            tl.debug_barrier()
            acc = tl.zeros([M_PAD, BLOCK_N], tl.float32)
            acc2 = tl.zeros([M_PAD, BLOCK_N], tl.float32)
            for s in range(SPLIT_K):
                b = (s * NB + i_n) * 2 * M_PAD * BLOCK_N
                acc += tl.load(part + b + tile, cache_modifier=".cg")
                if GLU:
                    acc2 += tl.load(part + b + M_PAD * BLOCK_N + tile, cache_modifier=".cg")
            tl.store(cnt + i_n, 0)  # ready for the next call
            _epilogue(acc, acc2, bias, res, y, o_m, o_n, m_m, m_n, s_rm, s_ym, N,
                      HAS_BIAS, HAS_RES, GLU, OUT_F32, ACCURATE_EXP, dt)
    return fin


class GemvWorkspace:
    """Split-K scratch of ``gemv``: fp32 partials and per-column-block arrival counters (zero between
    calls: the last program resets each). Calls on one stream may share one (also under PDL)."""

    def __init__(self, device: torch.device | str, partial_floats: int = 1 << 21, counters: int = 1 << 14):
        self.part = torch.empty(partial_floats, dtype=torch.float32, device=device)
        self.cnt = torch.zeros(counters, dtype=torch.int32, device=device)
        # per-head and per-KV-group arrival counters of the fused QKV epilogue (kernels/qkv_store.py)
        self.hcnt = torch.zeros(1024, dtype=torch.int32, device=device)


def gemv(x: torch.Tensor, w: torch.Tensor, *, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
         norm: tuple[torch.Tensor, float] | None = None, glu: bool = False, out_f32: bool = False,
         ws: GemvWorkspace | None = None, plan: GemvPlan | None = None,
         pdl: bool = False, glu_pairs: bool | None = None) -> torch.Tensor:
    """``y = epilogue(prologue(x) @ w.T)`` for at most 16 rows, in one launch.

    Args:
        x: ``[M, K]`` (last dim contiguous), M <= 16; w's dtype unless ``norm`` (then any float dtype).
        w: ``[N, K]`` contiguous (``[2N, K]`` with ``glu``: gate rows, then up rows).
        bias: ``[N]`` or None. residual: ``[M, N]`` in w's dtype or None (added after the rounding).
        norm: ``(weight [K], eps)``: x is first HF-RMSNorm-ed (x * rstd rounded, then * weight rounded).
        glu: return ``silu(x @ gate.T) * (x @ up.T)`` (each product rounded to the dtype first).
        out_f32: float32 output (of the product rounded to w's dtype), else w's dtype.
        ws: split-K scratch (made on the fly if None).
        plan: ``gemv_plan``'s tuple, to override it (tests, tuning); an optional 6th entry ``red``
            (FMA path): reduce the products over K every iteration instead of once at the end.
        pdl: launch with programmatic dependent launch (CUDA, Hopper).
        glu_pairs: with ``glu``, gate and up rows in separate programs that meet through the split-K
            partials (the second applies silu * up). None: ``GLU_PAIRS``.

    Returns ``[M, N]`` contiguous.
    """
    M, K = x.shape
    N = w.shape[0] // 2 if glu else w.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {M}")
    assert w.dim() == 2 and w.shape[1] == K and w.is_contiguous() and x.stride(1) == 1
    assert not glu or w.shape[0] == 2 * N
    assert norm is not None or x.dtype == w.dtype
    if bias is not None:
        assert bias.shape == (N,) and bias.is_contiguous()
    if residual is not None:
        assert residual.shape == (M, N) and residual.stride(1) == 1 and residual.dtype == w.dtype
    if norm is not None:
        assert norm[0].shape == (K,) and norm[0].is_contiguous()
    y = torch.empty(M, N, dtype=torch.float32 if out_f32 else w.dtype, device=x.device)
    if M == 0:
        return y
    bn, bk, split, warps, stages, *red = plan or gemv_plan(N, K, x.device, M, w.element_size())
    mp = m_pad(M)
    k_split = triton.cdiv(triton.cdiv(K, split), bk) * bk
    split = triton.cdiv(K, k_split)  # no empty splits
    nb = triton.cdiv(N, bn)
    pair = bool(glu and (GLU_PAIRS if glu_pairs is None else glu_pairs))
    if split > 1 or pair:
        ws = ws or GemvWorkspace(x.device, split * nb * 2 * MAX_ROWS * bn, nb)
        if ws.part.numel() < split * nb * 2 * mp * bn or ws.cnt.numel() < nb:
            raise ValueError("gemv workspace too small for this shape")
    part, cnt = (ws.part, ws.cnt) if split > 1 or pair else (y, y)
    gemv_kernel[(nb * (2 if pair else 1), split)](
        x, w, bias if bias is not None else w, residual if residual is not None else y,
        norm[0] if norm is not None else w, y, part, cnt, M, N, K, k_split, float(norm[1]) if norm else 0.0,
        x.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
        M_PAD=mp, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, NORM=norm is not None, HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, GLU=glu, OUT_F32=out_f32, IEEE=w.dtype == torch.float32, PAIR=pair,
        ACCURATE_EXP=_accurate_exp(), DOT=mode(mp, red), num_warps=warps, num_stages=stages, enable_fp_fusion=False, **pdl_args(pdl),
    )
    return y
