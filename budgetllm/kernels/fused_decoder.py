"""Fused elementwise pieces of a decoder layer: fewer, larger kernels per decode step.

At small batch a decode step is bound by kernel launches, not by bytes. These ops replace the
eager torch chains of ``budgetllm.models.modules`` with one launch each:

* ``add_rms_norm``: residual add + HF RMSNorm (3 kernels -> 1);
* ``silu_mul``: silu(gate) * up over the fused gate/up GEMM output (2 -> 1);
* ``qkv_rope``: per-head q/k norm, DMS borrowed-channel logits and zeroing, RoPE and the layer's
  eviction decisions (up to ~14 -> 1).

They must reproduce the torch code bit for bit (the engine is compared token for token with a
reference backend on HF modules), so every intermediate that torch materialises as a tensor of
the model dtype is rounded to it here too (``.to(dtype)``), maths is fp32 like torch's opmath,
divisions are IEEE (``div_rn``; Triton's ``/`` is approximate on NVIDIA) and every launch passes
``enable_fp_fusion=False`` so ``a * b + c`` is not contracted into an FMA. Only the order of the
RMS sum differs from torch's (a few-ulp fp32 difference of the mean is possible); on an H100 the
bf16 outputs were bit-identical to the torch code at real sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from budgetllm.kernels.paged_kv import as_int8_flags
from budgetllm.kernels.pdl import pdl_args, pdl_enter


def _accurate_exp() -> bool:
    # libdevice's expf is what torch's CUDA silu calls (tl.exp is ex2.approx on NVIDIA); the
    # interpreter has no libdevice, and its tl.exp is numpy's (accurate) anyway
    return not triton.knobs.runtime.interpret


@triton.jit
def _rstd(b_x, n: tl.constexpr, eps):
    """1 / sqrt(mean(x * x) + eps) of a fp32 row (padding lanes must be 0). Like torch's CUDA rms_norm
    (vectorised path, C % 4 == 0): an IEEE sum / C, then rsqrt (MUFU, as rsqrtf); 1 / sqrt would not match."""
    return tl.math.rsqrt(tl.math.div_rn(tl.sum(b_x * b_x, 0), n * 1.0) + eps)


@triton.jit
def _norm_scale(b_x, rstd, b_w, dtype: tl.constexpr):
    """HF RMSNorm's two roundings: (x * rstd) cast to the model dtype, then * weight in the dtype."""
    return ((b_x * rstd).to(dtype).to(tl.float32) * b_w.to(tl.float32)).to(dtype)


@triton.jit
def add_rms_norm_kernel(x, res, w, x_sum, h, eps, C: tl.constexpr, BLOCK_C: tl.constexpr, HAS_RES: tl.constexpr):
    i_n = tl.program_id(0)
    dt = x.dtype.element_ty
    o_c = tl.arange(0, BLOCK_C)
    m_c = o_c < C
    row = i_n.to(tl.int64) * C
    b_x = tl.load(x + row + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_RES:
        # torch's x + residual: fp32 add, one rounding to the dtype
        b_r = tl.load(res + row + o_c, mask=m_c, other=0.0).to(tl.float32)
        b_s = (b_x + b_r).to(dt)
        tl.store(x_sum + row + o_c, b_s, mask=m_c)
        b_x = b_s.to(tl.float32)
    b_w = tl.load(w + o_c, mask=m_c, other=0.0)
    tl.store(h + row + o_c, _norm_scale(b_x, _rstd(b_x, C, eps), b_w, dt), mask=m_c)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add and HF RMSNorm in one kernel (HF RMSNorm of ``x + residual``).

    Args:
        x: ``[N, C]`` contiguous, bf16/fp16/fp32; C up to 8192 (one program holds a whole row).
        residual: ``[N, C]`` same dtype, or None (no add).
        weight: ``[C]`` same dtype.
        eps: added to the mean of squares.

    Returns:
        ``(x_sum, h)``: x_sum ``[N, C]`` = x + residual rounded to the dtype (``x`` itself, the same
        object, when residual is None); h ``[N, C]`` = rms_norm(x_sum) * weight in the dtype.
    """
    N, C = x.shape
    assert x.is_contiguous() and weight.shape == (C,) and weight.dtype == x.dtype
    if residual is not None:
        assert residual.shape == (N, C) and residual.dtype == x.dtype and residual.is_contiguous()
    x_sum = x if residual is None else torch.empty_like(x)
    h = torch.empty_like(x)
    if N == 0:
        return x_sum, h
    BLOCK_C = triton.next_power_of_2(C)
    add_rms_norm_kernel[(N,)](
        x, x if residual is None else residual, weight.contiguous(), x_sum, h, float(eps),
        C=C, BLOCK_C=BLOCK_C, HAS_RES=residual is not None,
        num_warps=min(16, max(1, BLOCK_C // 512)), enable_fp_fusion=False,
    )
    return x_sum, h


@triton.jit
def silu_mul_kernel(gate_up, out, INTER: tl.constexpr, BLOCK: tl.constexpr, ACCURATE_EXP: tl.constexpr):
    i_n, i_c = tl.program_id(0), tl.program_id(1)
    dt = out.dtype.element_ty
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)
    m_c = o_c < INTER
    p_in = gate_up + i_n.to(tl.int64) * 2 * INTER + o_c
    b_g = tl.load(p_in, mask=m_c, other=0.0).to(tl.float32)
    b_u = tl.load(p_in + INTER, mask=m_c, other=0.0).to(tl.float32)
    if ACCURATE_EXP:
        e = libdevice.exp(-b_g)
    else:
        e = tl.exp(-b_g)
    # torch's CUDA silu is x / (1 + exp(-x)) in fp32, rounded to the dtype before the product
    b_a = tl.math.div_rn(b_g, 1.0 + e).to(dt).to(tl.float32)
    tl.store(out + i_n.to(tl.int64) * INTER + o_c, (b_a * b_u).to(dt), mask=m_c)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of the fused gate/up GEMM output in one kernel.

    Args:
        gate_up: ``[N, 2I]`` contiguous; gate = columns ``[:I]``, up = ``[I:]``.

    Returns:
        ``[N, I]`` contiguous, gate_up's dtype: silu(gate) rounded to the dtype, times up (fp32
        product, rounded), as ``F.silu(gate) * up`` computes it.
    """
    N, I2 = gate_up.shape
    assert gate_up.is_contiguous() and I2 % 2 == 0
    inter = I2 // 2
    out = torch.empty(N, inter, dtype=gate_up.dtype, device=gate_up.device)
    if N == 0 or inter == 0:
        return out
    BLOCK = min(1024, triton.next_power_of_2(inter))
    silu_mul_kernel[(N, triton.cdiv(inter, BLOCK))](
        gate_up, out, INTER=inter, BLOCK=BLOCK, ACCURATE_EXP=_accurate_exp(),
        num_warps=4, enable_fp_fusion=False,
    )
    return out


@triton.jit
def qkv_rope_kernel(qkv, cos, sin, pos, qk_w, q_out, k_out, logits, thr, base, uses_thr, logits_in, dec,
                    s_row, Hq, H, G, eps, scale, offset,
                    D: tl.constexpr, BLOCK_D: tl.constexpr, QK_NORM: tl.constexpr, BORROWED: tl.constexpr,
                    DECIDE: tl.constexpr, LOGITS_IN: tl.constexpr, PDL: tl.constexpr):
    # one program per (token, q-or-k head j); j < Hq are q heads, the rest k heads
    pdl_enter(PDL)
    rope_head(qkv, cos, sin, pos, qk_w, q_out, k_out, logits, thr, base, uses_thr, logits_in, dec,
              tl.program_id(0), tl.program_id(1), s_row, Hq, H, G, eps, scale, offset,
              D, BLOCK_D, QK_NORM, BORROWED, DECIDE, LOGITS_IN)


@triton.jit
def rope_head(qkv, cos, sin, pos, qk_w, q_out, k_out, logits, thr, base, uses_thr, logits_in, dec,
              i_n, j, s_row, Hq, H, G, eps, scale, offset,
              D: tl.constexpr, BLOCK_D: tl.constexpr, QK_NORM: tl.constexpr, BORROWED: tl.constexpr,
              DECIDE: tl.constexpr, LOGITS_IN: tl.constexpr):
    """Token i_n, q-or-k head j: the body of ``qkv_rope_kernel`` (also the epilogue of the fused QKV
    GEMM of ``kernels/qkv_store.py``, which calls it once the head's columns are written: qkv is read
    through L2 (``.cg``), other programs wrote it)."""
    dt = qkv.dtype.element_ty
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    # torch.roll(x, D/2)[i] = x[(i + D/2) % D]: loading the rolled row again is cheaper than a shuffle
    o_r = (o_d + D // 2) % D
    p_x = qkv + i_n.to(tl.int64) * s_row + j * D
    b_x = tl.load(p_x + o_d, mask=m_d, other=0.0, cache_modifier=".cg").to(tl.float32)
    b_xr = tl.load(p_x + o_r, mask=m_d, other=0.0, cache_modifier=".cg").to(tl.float32)
    if QK_NORM:  # Qwen3: per-head RMSNorm over D; rstd is per head, so the rolled copy shares it
        rstd = _rstd(b_x, D, eps)
        b_x = _norm_scale(b_x, rstd, tl.load(qk_w + j * D + o_d, mask=m_d, other=0.0), dt).to(tl.float32)
        b_xr = _norm_scale(b_xr, rstd, tl.load(qk_w + j * D + o_r, mask=m_d, other=0.0), dt).to(tl.float32)
    # the first q head of KV group j // G owns the group's logit and decision
    lead = (j < Hq) & (j % G == 0)
    h_kv = j // G
    if BORROWED:
        # logit = float32(x[D-1]) * scale - offset (two roundings, no FMA), after the norm, before RoPE
        logit = tl.sum(tl.where(o_d == D - 1, b_x, 0.0), 0) * scale - offset
        tl.store(logits + i_n * H + h_kv, logit, mask=lead)
        # then channel D-1 is zeroed before RoPE (scalar & vector bools: interpreter bug, fold into the compare)
        last = tl.where(lead, D - 1, -1)
        b_x = tl.where(o_d == last, 0.0, b_x)
        b_xr = tl.where(o_r == last, 0.0, b_xr)
    # RoPE as three torch ops: round(x * cos), round(roll(x) * sin_signed), round(sum)
    p = tl.load(pos + i_n).to(tl.int64)
    b_c = tl.load(cos + p * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_s = tl.load(sin + p * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_o = ((b_x * b_c).to(dt).to(tl.float32) + (b_xr * b_s).to(dt).to(tl.float32)).to(dt)
    if BORROWED:  # and zeroed again after RoPE
        b_o = tl.where(o_d == last, 0.0, b_o).to(dt)
    is_q = j < Hq
    tl.store(q_out + (i_n * Hq + j).to(tl.int64) * D + o_d, b_o, mask=o_d < tl.where(is_q, D, 0))
    tl.store(k_out + (i_n * H + j - Hq).to(tl.int64) * D + o_d, b_o, mask=o_d < tl.where(is_q, 0, D))
    if DECIDE:
        # rules.layer_decisions: where(uses_thr, float64(logit) > thr, base)
        b_dec = tl.load(base + i_n * H + h_kv, mask=lead, other=0)
        if BORROWED or LOGITS_IN:
            if LOGITS_IN:
                logit = tl.load(logits_in + i_n * H + h_kv, mask=lead, other=0.0)
            u = tl.load(uses_thr + i_n, mask=lead, other=0)
            t = tl.load(thr + i_n * H + h_kv, mask=lead, other=0.0)
            b_dec = tl.where(u != 0, (logit.to(tl.float64) > t).to(tl.int8), b_dec)
        tl.store(dec + i_n * H + h_kv, b_dec, mask=lead)


def qkv_rope(qkv: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, pos: torch.Tensor,
             num_q_heads: int, num_kv_heads: int, head_dim: int, qk_norm: torch.Tensor | None = None,
             eps: float = 1e-6, borrowed: tuple[int, float, float] | None = None,
             decide: tuple | None = None, pdl: bool = False):
    """q/k norm, DMS borrowed-channel logits, RoPE and the layer's decisions in one kernel.

    Reproduces the eager torch ops (q/k norm, borrowed channel, RoPE) after the QKV GEMM, plus ``rules.layer_decisions``.

    Args:
        qkv: ``[N, (Hq + 2H) * D]`` output of the fused q/k/v GEMM (last dim contiguous); heads
            ``j < Hq + H`` (q then k) are read, the V columns are not touched; qkv is not modified.
        cos, sin_signed: ``[max_pos, D]`` in qkv's dtype; sin_signed is sign-adjusted so that
            rotate_half(x) * sin == roll(x, D/2) * sin_signed (``FusedModel.__init__``).
        pos: ``[N]`` int32/int64 positions (read on the device).
        num_q_heads, num_kv_heads, head_dim: Hq, H, D (D even).
        qk_norm: ``[Hq + H, D]`` per-head RMSNorm weights (Qwen3's q_norm/k_norm) or None.
        eps: RMSNorm epsilon (qk_norm only).
        borrowed: ``(G, scale, offset)`` for the borrowed-channel variant (G = Hq // H): the first q
            head of each group gives logit = x[D-1] * scale - offset, and its channel D-1 is zeroed
            before and after RoPE.
        decide: None or ``(thr [N] or [N, H] float64 (per row, or per row and KV head), base [N, H] bool,
            uses_thr [N, 1] or [N] bool,
            logits_in [N, H] float32 or None)``; logits_in (adapter variant) is used when borrowed
            is None. decisions = where(uses_thr, logit > thr, base), or base without any logit.
        pdl: launch with programmatic dependent launch (``kernels/pdl.py``).

    Returns:
        ``(q [N, Hq, D], k [N, H, D], logits [N, H] float32 or None (None unless borrowed),
        decisions [N, H] int8 or None (None when decide is None))``; q and k are new contiguous
        tensors in qkv's dtype.
    """
    N = qkv.shape[0]
    Hq, H, D = num_q_heads, num_kv_heads, head_dim
    assert qkv.dim() == 2 and qkv.shape[1] == (Hq + 2 * H) * D and qkv.stride(1) == 1
    assert Hq % H == 0 and D % 2 == 0 and pos.shape == (N,)
    assert cos.shape == sin_signed.shape and cos.shape[1] == D and cos.dtype == sin_signed.dtype == qkv.dtype
    dev = qkv.device
    q = torch.empty(N, Hq, D, dtype=qkv.dtype, device=dev)
    k = torch.empty(N, H, D, dtype=qkv.dtype, device=dev)
    G, scale, offset = (Hq // H, 1.0, 0.0) if borrowed is None else borrowed
    assert G == Hq // H
    logits = torch.empty(N, H, dtype=torch.float32, device=dev) if borrowed is not None else None
    dec = thr = base = uses = lg_in = None
    if decide is not None:
        thr, base, uses, lg_in = decide
        assert thr.shape in ((N,), (N, H)) and thr.dtype == torch.float64 and base.shape == (N, H)
        thr = (thr[:, None] if thr.dim() == 1 else thr).expand(N, H).contiguous()
        assert uses.numel() == N and uses.dtype == torch.bool
        assert lg_in is None or borrowed is None, "logits come from the borrowed channel or from logits_in"
        assert lg_in is None or (lg_in.shape == (N, H) and lg_in.dtype == torch.float32)
        base, uses = as_int8_flags(base.contiguous()), as_int8_flags(uses.reshape(N).contiguous())
        lg_in = lg_in.contiguous() if lg_in is not None else None
        dec = torch.empty(N, H, dtype=torch.int8, device=dev)
    if qk_norm is not None:
        assert qk_norm.shape == (Hq + H, D) and qk_norm.dtype == qkv.dtype
        qk_norm = qk_norm.contiguous()
    if N == 0:
        return q, k, logits, dec

    def _or(t):  # unused pointer arguments (their constexpr branch is compiled out)
        return qkv if t is None else t

    BLOCK_D = triton.next_power_of_2(D)
    qkv_rope_kernel[(N, Hq + H)](
        qkv, cos, sin_signed, pos, _or(qk_norm), q, k, _or(logits), _or(thr), _or(base), _or(uses), _or(lg_in),
        _or(dec), qkv.stride(0), Hq, H, G, float(eps), float(scale), float(offset),
        D=D, BLOCK_D=BLOCK_D, QK_NORM=qk_norm is not None, BORROWED=borrowed is not None,
        DECIDE=decide is not None, LOGITS_IN=lg_in is not None,
        num_warps=1 if BLOCK_D <= 128 else 2, enable_fp_fusion=False, **pdl_args(pdl),
    )
    return q, k, logits, dec
