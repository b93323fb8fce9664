"""The decode step for small batches (at most 4 rows by default): few kernels per layer, weights streamed once.

At batch 1 a decode step used to cost ~2 ms whatever the model: 13 kernels per layer (cuBLAS GEMV
shapes with split-K reduces, norms, silu, ...), each paying a launch and a tail. Here a layer is,
by default (the fastest measured on the H200, bench/NOTES.md v5), 8 launches:

1. ``gemv`` (residual stream x -> RMSNorm -> QKV GEMM + bias),
2. ``qkv_rope`` (q/k norm, DMS logits and decisions, RoPE) and 3. ``store_decode_kv`` (store-and-evict
   of the new K/V),
4. ``paged_decode_attention`` and 5. its split-K reduce kernel (``balanced=True`` shares the splits
   out over the KV heads by row length),
6. ``gemv`` (o-proj + bias + residual add: the new x),
7. ``gemv`` (x -> RMSNorm -> gate/up GEMM -> silu * up),
8. ``gemv`` (down-proj + residual add: the next layer's x).

``fuse_qkv=True`` runs 1-3 as ONE launch (``kernels/qkv_store.py``) and ``fuse_reduce=True`` folds
the reduce into the attention launch (5 launches per layer); both were measured slower at batch 1
(their serial tails cost more than the launches they save) and stay selectable for measurement
(``bench/decode_floor.py``'s "l6_pdl" / "l5_pdl"). The per-layer borrowed variant always takes the
unfused QKV path (its decision is made outside a kernel).

The step ends with ``gemv`` (final RMSNorm -> LM head, float32 logits). The RMSNorms moved into
the GEMMs' prologues, so no separate norm kernels remain; each GEMM streams its weight matrix at
once with split-K inside one launch when the output is narrow (kernels/gemv.py).

The maths and roundings are those of ``FusedModel``'s pieces; only the order of each GEMM's K sum
differs from cuBLAS. The runner chooses this path per batch-size bucket at graph capture time
(``DecodeLayers.takes``: buckets of at most ``max_rows`` rows, 4 by default: the FMA kernel);
larger batches keep cuBLAS, which was faster than the 16-row tl.dot kernel on the H200.

``pdl``: the GEMMs and the small kernels between them are launched with programmatic dependent
launch (Hopper, ``kernels/pdl.py``): each kernel launches while the previous one still runs and
waits for it inside (the embedding and the adapter's torch ops are plain launches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from budgetllm.kernels import paged_decode_attention, store_decode_kv
from budgetllm.kernels.gemv import FMA_ROWS, HAS_PDL, MAX_ROWS, GemvWorkspace, gemv, m_pad
from budgetllm.kernels.qkv_store import qkv_store
from budgetllm.models.modules import FusedModel


class DecodeLayers:
    """Runs one decode step of ``model`` over the paged cache with the fused skinny-GEMM kernels."""

    def __init__(self, model: FusedModel, device: torch.device, pdl: bool = False, balanced: bool = False,
                 max_rows: int = FMA_ROWS, plans: dict | None = None, glu_pairs: bool | None = None,
                 fuse_qkv: bool = False, fuse_reduce: bool = False):
        self.m = model
        self.ws = GemvWorkspace(device)
        self.pdl = bool(pdl and HAS_PDL and device.type == "cuda")
        # attention splits shared out over heads by row length: measured slower at batch 1 (where
        # the attention is latency-bound), so off by default (bench/NOTES.md)
        self.balanced = balanced
        self.max_rows = min(max_rows, MAX_ROWS)  # larger buckets keep cuBLAS
        self.plans = plans or {}  # (N, K, glu, M_PAD) -> gemv plan (tuning); else gemv_plan's
        self.glu_pairs = glu_pairs  # gemv's glu_pairs (None: its default)
        # off by default (bench/NOTES.md v5: measured slower at batch 1 on the H200); on: QKV + RoPE +
        # decision + store in one kernel (kernels/qkv_store.py; the per-layer borrowed variant decides
        # outside a kernel: 3 launches there), the attention's split reduce inside the attention kernel
        # (its counters: zero between calls)
        self.fuse_qkv = fuse_qkv and not (model.borrowed and model.dms.alpha_per == "layer")
        self.reduce_cnt = torch.zeros(MAX_ROWS * model.H, dtype=torch.int32, device=device) if fuse_reduce else None

    def _gemv(self, x: torch.Tensor, w: torch.Tensor, glu: bool = False, **kw) -> torch.Tensor:
        N = w.shape[0] // 2 if glu else w.shape[0]
        plan = self.plans.get((N, w.shape[1], glu, m_pad(x.shape[0])))
        return gemv(x, w, glu=glu, ws=self.ws, pdl=self.pdl, plan=plan, glu_pairs=self.glu_pairs, **kw)

    def _qkv_store(self, li: int, L, x, pos, decide, kv, slots, base) -> torch.Tensor:
        m = self.m
        borrowed, kdec = m.rope_args(li, x, decide)
        plan = self.plans.get((L.qkv_w.shape[0], L.qkv_w.shape[1], False, m_pad(x.shape[0])))
        return qkv_store(x, L.qkv_w, L.qkv_b, (L.in_norm, m.eps), m.cos, m.sin_signed, pos, m.Hq, m.H, m.D, kv, li,
                         slots, base, qk_norm=L.qk_norm, eps=m.eps, borrowed=borrowed, decide=kdec, ws=self.ws,
                         plan=plan, pdl=self.pdl)

    @staticmethod
    def supports(model: FusedModel) -> bool:
        """silu MLPs only (the fused gate/up epilogue is silu * up); other activations keep the old path."""
        return model.silu

    def takes(self, bs: int) -> bool:
        return 0 < bs <= self.max_rows

    def step(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, base: torch.Tensor,
             decide: tuple, kv, num_splits: int) -> torch.Tensor:
        """ids/slots [bs] int32, pos [bs] int64, ``base``/``decide`` from ``rules.step_decisions`` ->
        float32 logits [bs, V]. Stores the step's K/V (``kv.seq_pos`` is advanced by the caller)."""
        m, pdl, gemv_ = self.m, self.pdl, self._gemv
        x = F.embedding(ids, m.embed_w)
        for li, L in enumerate(m.layers):
            if self.fuse_qkv:
                q = self._qkv_store(li, L, x, pos, decide, kv, slots, base)
            else:
                qkv = gemv_(x, L.qkv_w, bias=L.qkv_b, norm=(L.in_norm, m.eps))
                q, k, v, dec = m.rope_decide(li, qkv, x, pos, decide, pdl=pdl)
                store_decode_kv(kv, k, v, base if dec is None else dec, li, slots, pdl=pdl)
            o = paged_decode_attention(q, kv, li, slots, m.scale, num_splits=num_splits, balanced=self.balanced,
                                       pdl=pdl, reduce_cnt=self.reduce_cnt)
            x = gemv_(o.reshape(o.shape[0], -1), L.o_w, bias=L.o_b, residual=x)
            act = gemv_(x, L.gate_up_w, norm=(L.post_norm, m.eps), glu=True)
            x = gemv_(act, L.down_w, residual=x)
        return gemv_(x, m.lm_head_w, norm=(m.norm_w, m.eps), out_f32=True)
