"""One tile of online softmax (flash attention), shared by the decode and prefill attention kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(b_q, b_k, b_v, keep, b_m, b_l, b_acc, sm_scale, IEEE: tl.constexpr):
    """Fold one K/V tile into the running max ``b_m`` (log2 units), sum ``b_l`` and output ``b_acc``.

    ``keep`` masks the scores; scores are scaled by ``sm_scale`` (which includes log2(e)).
    """
    if IEEE:
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
    else:
        b_s = tl.dot(b_q, tl.trans(b_k))
    b_s = tl.where(keep, b_s * sm_scale, float("-inf"))
    m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_p = tl.math.exp2(b_s - m_new[:, None])
    alpha = tl.math.exp2(b_m - m_new)
    b_l = b_l * alpha + tl.sum(b_p, 1)
    if IEEE:
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p, b_v.to(tl.float32), input_precision="ieee")
    else:
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
    return m_new, b_l, b_acc
