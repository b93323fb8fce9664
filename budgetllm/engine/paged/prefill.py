"""The prefill of the paged engine: chunks of prompt tokens through every layer, their K/V stored
under the DMS decisions (split out of ``model_runner.py``; ``ModelRunner.prefill`` / ``prefill_body``
call these with the runner as ``self``).

A layer of :func:`prefill_body` launches 13 kernels (``docs/prefill-kernels.md`` lists them): the 4
GEMMs, the adapter's decision logits, q/k norm + RoPE + decisions, the compaction of the unflagged
tokens, the attention, the store (slots, then K/V), 2 residual adds + RMSNorm and SiLU * up. What is
computed once per call (the rule's decisions per token) sits before the loop.
"""

from __future__ import annotations

import functools

import torch

from budgetllm.engine.rules import STEP_CODES, THRESHOLD, RowRule
from budgetllm.kernels import dms_prefill_attention, store_prefill_kv
from budgetllm.kernels.prefill_attention import compact_unflagged
from budgetllm.kernels.prefill_inputs import prefill_decisions


@torch.inference_mode()
def prefill(self, items: list[tuple[int, list[int], int, RowRule]], want: list[bool],
            free_pages: int = 0) -> torch.Tensor:
    """Feed chunks (slot, token ids, first position, rule) on top of their rows (chunked prefill
    works the same on an existing row). Returns logits [sum(want), V] of the chunks' last tokens
    where ``want``. One small chunk runs in a prefill graph when ``free_pages`` (the host's count)
    covers its reserve, else eagerly."""
    pg = self.prefill_graphs
    if pg is not None and len(items) == 1:
        slot, toks, p0, rule = items[0]
        T = pg.bucket_for(len(toks))
        if T is not None and free_pages >= pg.reserve_pages(len(toks)):
            out = pg.run(slot, toks, p0, rule, T)
            return out if want[0] else out[:0]
    m, dev = self.model, self.device
    lens = [len(toks) for _, toks, _, _ in items]
    cu_host = [0]
    for n in lens:
        cu_host.append(cu_host[-1] + n)
    ids = torch.tensor(items[0][1] if len(items) == 1 else [t for _, toks, _, _ in items for t in toks],
                       dtype=torch.int64)
    pos = torch.cat([torch.arange(p0, p0 + n) for (_, _, p0, _), n in zip(items, lens, strict=True)])
    # per-token rule fields: one value per chunk, repeated on the device (no Python pass per token)
    reps = torch.tensor(lens, dtype=torch.int64)
    fields = torch.tensor([[r.code, r.sinks, r.period] for *_, r in items], dtype=torch.int32)
    thr_c = torch.stack([r.thr_grid(m.num_layers, m.H) for *_, r in items])  # [chunks, L, H]
    ids, pos, fields, thr_c, reps = (t.to(dev, non_blocking=True) for t in (ids, pos, fields, thr_c, reps))
    N = cu_host[-1]
    fields = fields.repeat_interleave(reps, dim=0, output_size=N)
    code, sinks, period = fields.t().contiguous()  # [N] each, contiguous (kernels/prefill_inputs.py)
    thr = thr_c.repeat_interleave(reps, dim=0, output_size=N).transpose(0, 1)  # [L, tokens, H]
    slots = torch.tensor([s for s, _, _, _ in items], dtype=torch.int32, device=dev)
    cu = torch.tensor(cu_host, dtype=torch.int32, device=dev)
    # Without threshold rows the decisions are the same in every layer: compact them once.
    h = self.prefill_body(ids, pos, code, sinks, period, thr, slots, cu, max(lens),
                          per_layer=any(r.code == THRESHOLD for *_, r in items))
    self.compute_stats(advance=(slots, torch.tensor(lens, dtype=torch.int32, device=dev)))  # seq_pos += lens too
    last = torch.tensor([cu_host[i + 1] - 1 for i, w in enumerate(want) if w], dtype=torch.int64, device=dev)
    return m.logits(h[last])

def prefill_body(self, ids, pos, code, sinks, period, thr, slots, cu, max_seqlen: int,
                 per_layer: bool = True) -> torch.Tensor:
    """Every layer over the chunks (device tensors only: graph-capturable); returns the final
    normed stream [N, hidden]. ``per_layer``: the decisions may differ per layer (threshold rows),
    else the unflagged tokens are compacted once for all layers."""
    m, kv = self.model, self.kv
    base, uses_thr = prefill_decisions(pos, code, sinks, period, m.H, STEP_CODES)  # rules.step_decisions
    keep = None if per_layer else compact_unflagged(base, cu)
    block_m = attention_block_m(max_seqlen, m.Hq, kv.k_pool.device)
    x, h = m.embed_norm(ids)
    for li in range(m.num_layers):
        q, k, v, dec = m.attention_inputs(li, x, h, pos, (thr, base, uses_thr))
        dec = base if dec is None else dec
        o = dms_prefill_attention(q, k, v, dec, kv, li, slots, m.scale, cu_seqlens=cu, max_seqlen=max_seqlen,
                                  keep=keep if keep is not None else compact_unflagged(dec, cu), block_m=block_m)
        store_prefill_kv(kv, k, v, dec, li, slots, cu_seqlens=cu)
        x, h = m.attention_out(li, x, o)
        x, h = m.mlp(li, x, h)
    return h


def attention_block_m(max_seqlen: int, num_q_heads: int, device: torch.device) -> int:
    """Query tile of the prefill attention: 128, or 64 when 128-token tiles of the longest chunk give
    fewer programs than the GPU has SMs (an agent turn of a few hundred tokens: 3 tiles x 12 heads
    on a 1.5B model = 36 programs on 132 SMs; 64-token tiles double them)."""
    if device.type != "cuda":
        return 128
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    return 128 if -(-max_seqlen // 128) * num_q_heads >= sms else 64


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
