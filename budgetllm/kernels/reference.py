"""Naive PyTorch versions of every kernel op (the test oracle). Slow, obviously right, float64 maths.

Same signatures as the Triton ops (tuning arguments are accepted and ignored). The store ops pop pages one by one from ``free_stack`` in
order, so page ids may differ from the kernels' (atomics): compare rows with ``read_row``.
"""

from __future__ import annotations

import torch

from budgetllm.kernels.paged_kv import PagedKV


def dms_attention_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flags: torch.Tensor, window: int,
                        scale: float) -> torch.Tensor:
    """Brute-force attention over one whole sequence under the DMS mask.

    q ``[T, Hq, D]``, k/v ``[T, H, D]``, flags ``[T, H]`` (flag of token k = decision of token k+1).
    mask[q, k] = k <= q and (q - k <= window or not flags[k]). Returns ``[T, Hq, D]`` in q's dtype.
    """
    T, Hq, D = q.shape
    H = k.shape[1]
    G = Hq // H
    i = torch.arange(T, device=q.device)
    out = torch.empty_like(q)
    for hq in range(Hq):
        h = hq // G
        keep = (i[None, :] <= i[:, None]) & ((i[:, None] - i[None, :] <= window) | ~flags[:, h].bool()[None, :])
        s = (q[:, hq].double() @ k[:, h].double().T) * scale
        s = s.masked_fill(~keep, float("-inf"))
        out[:, hq] = (torch.softmax(s, -1) @ v[:, h].double()).to(q.dtype)
    return out


def read_row(kv: PagedKV, layer: int, slot: int, head: int):
    """Row (layer, slot, head) in row-local order: ``(pos [n], flag [n], k [n, D], v [n, D])``."""
    n = int(kv.row_lens[layer, slot, head])
    PAGE = kv.page_size
    idx = torch.arange(n, device=kv.k_pool.device)
    pg = kv.block_tables[layer, slot, head, idx // PAGE].long()
    off = idx % PAGE
    return kv.slot_pos[pg, off], kv.slot_flag[pg, off], kv.k_pool[pg, off], kv.v_pool[pg, off]


def _append(kv: PagedKV, layer: int, s: int, h: int, p: int, k: torch.Tensor, v: torch.Tensor, dec: int) -> None:
    """The layout doc's "Appending token p to a row", one token, one row."""
    PAGE, W1 = kv.page_size, kv.window + 1
    bt, ring = kv.block_tables[layer, s, h], kv.ring[layer, s, h]

    def loc(j):
        return int(bt[j // PAGE]), j % PAGE

    if p >= 1:
        kv.slot_flag[loc(int(ring[(p - 1) % W1]))] = dec
    n = int(kv.row_lens[layer, s, h])
    if p >= W1 and kv.slot_flag[loc(int(ring[p % W1]))] != 0:
        idx = int(ring[p % W1])
    else:
        idx = n
        if n % PAGE == 0:
            top = int(kv.alloc_state[0])
            if top >= kv.num_pages or n // PAGE >= bt.shape[0]:
                kv.alloc_state[1] += 1
                kv.slot_oom[s] = 1
                return
            bt[n // PAGE] = kv.free_stack[top]
            kv.alloc_state[0] = top + 1
        kv.row_lens[layer, s, h] = n + 1
    kv.k_pool[loc(idx)] = k.to(kv.k_pool.dtype)
    kv.v_pool[loc(idx)] = v.to(kv.v_pool.dtype)
    kv.slot_pos[loc(idx)] = p
    kv.slot_flag[loc(idx)] = 0
    ring[p % W1] = idx


def store_decode_kv(kv: PagedKV, k_new, v_new, evict_prev, layer: int, slot_ids, pdl: bool = False) -> None:
    for b, s in enumerate(slot_ids.tolist()):
        for h in range(k_new.shape[1]):
            _append(kv, layer, s, h, int(kv.seq_pos[s]), k_new[b, h], v_new[b, h], int(evict_prev[b, h]))


def store_prefill_kv(kv: PagedKV, k, v, decisions, layer: int, slot_ids, cu_seqlens=None) -> None:
    cu = [0, k.shape[0]] if cu_seqlens is None else cu_seqlens.tolist()
    for b, s in enumerate(slot_ids.tolist()):
        p0 = int(kv.seq_pos[s])
        for h in range(k.shape[1]):
            for i in range(cu[b], cu[b + 1]):
                _append(kv, layer, s, h, p0 + i - cu[b], k[i, h], v[i, h], int(decisions[i, h]))


def release_rows(kv: PagedKV, slot_ids) -> None:
    for s in slot_ids.tolist():
        for pg in kv.block_tables[:, s].flatten().tolist():
            if pg >= 0:
                kv.alloc_state[0] -= 1
                kv.free_stack[int(kv.alloc_state[0])] = pg
        kv.block_tables[:, s] = -1
        kv.row_lens[:, s] = 0
        kv.seq_pos[s] = 0
        kv.slot_oom[s] = 0


def num_free_pages(kv: PagedKV) -> torch.Tensor:
    return kv.num_pages - kv.alloc_state[:1]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """q [M, D], k/v [n, D], keep [M, n] -> [M, D] float64; rows with nothing visible give zeros."""
    s = (q.double() @ k.double().T) * scale
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v.double()


def paged_decode_attention(q: torch.Tensor, kv: PagedKV, layer: int, slot_ids: torch.Tensor, scale: float,
                           num_splits: int | None = None, block_n: int | None = None, balanced: bool = False,
                           pdl: bool = False, reduce_cnt=None) -> torch.Tensor:
    B, Hq, D = q.shape
    H = kv.block_tables.shape[2]
    G = Hq // H
    out = torch.empty_like(q)
    for b, s in enumerate(slot_ids.tolist()):
        for h in range(H):
            _, _, k, v = read_row(kv, layer, s, h)
            keep = torch.ones(G, k.shape[0], dtype=torch.bool, device=q.device)
            out[b, h * G:(h + 1) * G] = _attend(q[b, h * G:(h + 1) * G], k, v, keep, scale).to(q.dtype)
    return out


def dms_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decisions: torch.Tensor, kv: PagedKV,
                          layer: int, slot_ids: torch.Tensor, scale: float, cu_seqlens=None,
                          max_seqlen: int | None = None, block_m: int = 128, block_n: int = 64,
                          num_warps: int | None = None, num_stages: int = 2) -> torch.Tensor:
    N, Hq, D = q.shape
    H = k.shape[1]
    G, w = Hq // H, kv.window
    cu = [0, N] if cu_seqlens is None else cu_seqlens.tolist()
    out = torch.empty_like(q)
    for b, s in enumerate(slot_ids.tolist()):
        bos, n = cu[b], cu[b + 1] - cu[b]
        p0 = int(kv.seq_pos[s])
        pq = p0 + torch.arange(n, device=q.device)
        for h in range(H):
            pos, flag, ok, ov = read_row(kv, layer, s, h)
            flag = flag.clone()
            if n > 0:
                flag[pos == p0 - 1] = decisions[bos, h].to(flag.dtype)  # decided by the first chunk token
            ck, cv = k[bos:bos + n, h], v[bos:bos + n, h]
            cflag = torch.zeros(n, dtype=torch.bool, device=q.device)
            cflag[:-1] = decisions[bos + 1:bos + n, h].bool()
            kpos = torch.cat([pos.long(), pq])
            kflag = torch.cat([flag.bool(), cflag])
            d = pq[:, None] - kpos[None, :]
            keep = (d >= 0) & ((d <= w) | ~kflag[None, :])
            keys, vals = torch.cat([ok, ck]), torch.cat([ov, cv])
            for g in range(G):
                hq = h * G + g
                out[bos:bos + n, hq] = _attend(q[bos:bos + n, hq], keys, vals, keep, scale).to(q.dtype)
    return out


def compact_unflagged(dec: torch.Tensor, cu_seqlens: torch.Tensor, block: int = 256):
    """kernels/compact.py: per sequence and KV head, the unflagged chunk tokens (flag(i) = dec[i + 1],
    the last token unflagged) listed in order, and the exclusive count restarting at each sequence."""
    N, H = dec.shape
    keep_idx = torch.full((N, H), -1, dtype=torch.int32)
    keep_cnt = torch.zeros(N, H, dtype=torch.int32)
    cu = cu_seqlens.tolist()
    for b in range(len(cu) - 1):
        for h in range(H):
            r = 0
            for i in range(cu[b], cu[b + 1]):
                keep_cnt[i, h] = r
                if i + 1 == cu[b + 1] or int(dec[i + 1, h]) == 0:
                    keep_idx[cu[b] + r, h] = i
                    r += 1
    return keep_idx.to(dec.device), keep_cnt.to(dec.device)


def adapter_logits(x, norm_w, proj_w, proj_b, eps: float, alpha_scale: float, alpha_offset: float, per_layer: bool):
    """kernels/adapter_logits.py: as ``DMSSpec.adapter_logits`` (float32 RMSNorm, projection, scale, offset)."""
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_w
    lg = torch.nn.functional.linear(x, proj_w, proj_b) * alpha_scale - alpha_offset
    return lg[:, :1].expand_as(lg).contiguous() if per_layer else lg


# -- fused decoder ops (kernels/fused_decoder.py) -----------------------------------------------
# Unlike the ops above these are not float64: they are the engine's own torch code
# (the eager torch code FusedModel ran before fusion, engine/rules.py layer_decisions), transcribed, so
# the kernels are checked against the exact roundings of the eager path they replace.


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF RMSNorm as the engine computed it before fusion: normalise in float32 and cast back (F.rms_norm), then scale in the dtype."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), None, eps) * weight


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    x_sum = x if residual is None else x + residual
    return x_sum, _hf_rms_norm(x_sum, weight, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def qkv_rope(qkv: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, pos: torch.Tensor,
             num_q_heads: int, num_kv_heads: int, head_dim: int, qk_norm: torch.Tensor | None = None,
             eps: float = 1e-6, borrowed=None, decide=None, pdl: bool = False):
    N, Hq, H, D = qkv.shape[0], num_q_heads, num_kv_heads, head_dim
    qk = qkv[:, : (Hq + H) * D].reshape(N, Hq + H, D).clone()  # the engine zeroes its own buffer; not the caller's
    if qk_norm is not None:
        qk = _hf_rms_norm(qk, qk_norm, eps)
    logits = None
    if borrowed is not None:
        G, scale, offset = borrowed
        logits = qk[:, :Hq:G, -1].float() * scale - offset
        qk[:, :Hq:G, -1] = 0
    c, s = cos[pos.long()][:, None, :], sin_signed[pos.long()][:, None, :]
    qk = qk * c + torch.roll(qk, D // 2, dims=-1) * s
    if borrowed is not None:
        qk[:, :Hq:G, -1] = 0
    decisions = None
    if decide is not None:
        thr, base, uses_thr, logits_in = decide
        lg = logits if logits is not None else logits_in
        decisions = base if lg is None else torch.where(uses_thr.reshape(N, 1), lg > (thr if thr.dim() == 2 else thr[:, None]), base)
        decisions = decisions.to(torch.int8)
    return qk[:, :Hq].contiguous(), qk[:, Hq:].contiguous(), logits, decisions


# -- skinny GEMM of the decode step (kernels/gemv.py) --------------------------------------------
# The torch ops the fused GEMM replaces, in the model dtype (same roundings between ops); only the
# order of the K sum differs from the kernel's.


def gemv(x: torch.Tensor, w: torch.Tensor, *, bias=None, residual=None, norm=None, glu: bool = False,
         out_f32: bool = False, ws=None, plan=None, pdl: bool = False) -> torch.Tensor:
    h = x if norm is None else _hf_rms_norm(x.to(w.dtype), norm[0], norm[1])
    if glu:
        gate, up = w.chunk(2, dim=0)
        y = torch.nn.functional.silu(torch.nn.functional.linear(h, gate)) * torch.nn.functional.linear(h, up)
    else:
        y = torch.nn.functional.linear(h, w, bias)
    if residual is not None:
        y = y + residual
    return y.float() if out_f32 else y


def qkv_store(x, w, bias, norm, cos, sin_signed, pos, num_q_heads: int, num_kv_heads: int, head_dim: int, kv: PagedKV,
              layer: int, slot_ids, evict_base, qk_norm=None, eps: float = 1e-6, borrowed=None, decide=None, ws=None,
              plan=None, pdl: bool = False) -> torch.Tensor:
    """kernels/qkv_store.py: the three ops it fuses, one after the other."""
    qkv = gemv(x, w, bias=bias, norm=norm)
    q, k, _, dec = qkv_rope(qkv, cos, sin_signed, pos, num_q_heads, num_kv_heads, head_dim, qk_norm=qk_norm, eps=eps,
                            borrowed=borrowed, decide=decide)
    v = qkv[:, (num_q_heads + num_kv_heads) * head_dim:].reshape(-1, num_kv_heads, head_dim)
    store_decode_kv(kv, k, v, evict_base if dec is None else dec, layer, slot_ids)
    return q


def slot_stats(kv: PagedKV, num_slots: int, page_size: int, out: torch.Tensor, advance=None) -> None:
    """kernels/step_stats.py: the torch ops it replaces."""
    S, lens = num_slots, kv.row_lens[:, :num_slots].long()
    out[:S] = ((lens + page_size - 1) // page_size).sum(dim=(0, 2))
    out[S:2 * S] = lens.sum(dim=(0, 2))
    out[2 * S:3 * S] = kv.slot_oom[:S]
    out[3 * S] = num_free_pages(kv)[0]
    if advance is not None:
        slots, inc = advance
        kv.seq_pos[slots.long()] = kv.seq_pos[slots.long()] + inc


def step_inputs(ibuf, bs: int, seq_pos, thr_slot, num_kv_heads: int, codes):
    """kernels/step_inputs.py: the torch ops it replaces (the formula of ``engine.rules.step_decisions``;
    the kernel test checks both)."""
    ib = ibuf[:, :bs]
    slots = ib[1].long()
    pos = seq_pos[slots].long()
    base, uses = prefill_decisions(pos, ib[3], ib[4], ib[5], num_kv_heads, codes)
    return pos, base, uses, thr_slot.index_select(1, slots)


def prefill_decisions(pos, code, sinks, period, num_kv_heads: int, codes):
    """kernels/prefill_inputs.py (and the decisions of kernels/step_inputs.py): ``rules.step_decisions``."""
    WINDOW, ALWAYS, FORCED, THRESHOLD = codes
    k, c, sinks, period = (pos.long() - 1)[:, None], code[:, None], sinks[:, None].long(), period[:, None].long()
    out = torch.where(c == WINDOW, k >= sinks, c == ALWAYS)
    out = torch.where(c == FORCED, k % period.clamp(min=1) != 0, out)
    return out.expand(pos.shape[0], num_kv_heads).contiguous(), c == THRESHOLD
