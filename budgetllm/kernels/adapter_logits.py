"""The DMS adapter's decision logits of a block of tokens in one launch (the prefill path).

``logits = (RMSNorm(x) * norm_w) @ proj_w.T + proj_b``, then ``* alpha_scale - alpha_offset``, all
in float32 (``DMSSpec.adapter_logits`` is the definition; ``kernels.reference.adapter_logits`` its
twin); with ``per_layer`` KV head 0's logit is copied to every head. Eager, that is ~9 kernels per
layer (cast, pow, mean, add, rsqrt, 2 mul, GEMM, mul, sub). The sums run in another order than
torch's (fp32: a few ulps), like the RMS sum of ``fused_decoder.add_rms_norm``.

One program per ``BLOCK_M`` tokens: pass 1 sums the squares over the hidden dim, pass 2 the products
with the H projection rows (H <= 16: a [BLOCK_M, BLOCK_H, BLOCK_K] broadcast, no tensor cores).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def adapter_logits_kernel(x, norm_w, proj_w, proj_b, out, N, C, H, s_xn, eps, scale, offset,
                          HAS_BIAS: tl.constexpr, PER_LAYER: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    o_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < N
    o_k = tl.arange(0, BLOCK_K)
    o_h = tl.arange(0, BLOCK_H)
    m_h = o_h < H
    row = o_m.to(tl.int64) * s_xn
    ss = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, C, BLOCK_K):
        m_k = (k0 + o_k) < C
        b_x = tl.load(x + row[:, None] + (k0 + o_k)[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_x = b_x.to(tl.float32)
        ss += tl.sum(b_x * b_x, 1)
    r = 1.0 / tl.sqrt_rn(ss / C + eps)  # torch.rsqrt, correctly rounded
    acc = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    for k0 in range(0, C, BLOCK_K):
        m_k = (k0 + o_k) < C
        b_x = tl.load(x + row[:, None] + (k0 + o_k)[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(norm_w + k0 + o_k, mask=m_k, other=0.0)
        b_y = b_x.to(tl.float32) * r[:, None] * b_w[None, :]  # [BLOCK_M, BLOCK_K]
        b_p = tl.load(proj_w + o_h[:, None] * C + (k0 + o_k)[None, :], mask=m_h[:, None] & m_k[None, :],
                      other=0.0)  # [BLOCK_H, BLOCK_K]
        acc += tl.sum(b_y[:, None, :] * b_p[None, :, :], 2)
    if HAS_BIAS:
        acc += tl.load(proj_b + o_h, mask=m_h, other=0.0)[None, :]
    lg = acc * scale - offset
    if PER_LAYER:  # KV head 0 decides for the layer
        lg0 = tl.sum(tl.where(o_h[None, :] == 0, lg, 0.0), 1)
        lg = tl.zeros([BLOCK_M, BLOCK_H], tl.float32) + lg0[:, None]
    tl.store(out + o_m[:, None] * H + o_h[None, :], lg, mask=m_m[:, None] & m_h[None, :])


def adapter_logits(x: torch.Tensor, norm_w: torch.Tensor, proj_w: torch.Tensor, proj_b: torch.Tensor | None,
                   eps: float, alpha_scale: float, alpha_offset: float, per_layer: bool) -> torch.Tensor:
    """Decision logits ``[N, H]`` float32 of the residual stream ``x [N, C]`` (any float dtype, last
    dim contiguous); ``norm_w [C]``, ``proj_w [H, C]``, ``proj_b [H]`` float32 (contiguous)."""
    N, C = x.shape
    H = proj_w.shape[0]
    out = torch.empty(N, H, dtype=torch.float32, device=x.device)
    if N == 0:
        return out
    BLOCK_H = max(2, triton.next_power_of_2(H))
    BLOCK_K = max(16, min(128, 4096 // (16 * BLOCK_H)))
    BLOCK_M = 16
    adapter_logits_kernel[(triton.cdiv(N, BLOCK_M),)](
        x, norm_w, proj_w, proj_w if proj_b is None else proj_b, out, N, C, H, x.stride(0), float(eps),
        float(alpha_scale), float(alpha_offset), HAS_BIAS=proj_b is not None, PER_LAYER=per_layer,
        BLOCK_M=BLOCK_M, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K, num_warps=4, enable_fp_fusion=False,
    )
    return out
