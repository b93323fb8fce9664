"""Quality measurement: whole-batch forwards under an eviction policy's visibility mask.

Policies (all masking-based, per (layer, KV head), right-padded batches):
* ``dms``: the learned decisions at a threshold (the same mask the reference backend realises);
* ``window``: StreamingLLM, 4 sink tokens + the most recent ``cap - 4``;
* ``tova``: when the cache exceeds ``cap``, drop the entry the current query attends to least;
* ``h2o``: keep the ``cap // 2`` most recent, drop the smallest accumulated attention among the rest;
* ``random``: drop a uniformly random entry (never the newest).
Attention scores for TOVA/H2O are the softmax of the current query over the kept entries, averaged
over the query heads of the GQA group. Budgets (``cap`` per sequence) come from the DMS run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from budgetllm.dms.decisions import DecisionHead, attention_inputs
from budgetllm.dms.train_attention import grouped_sdpa

SEQUENTIAL = ("tova", "h2o", "random")


def _causal(T, device):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def dms_mask(logits: torch.Tensor, threshold, window: int) -> torch.Tensor:
    """logits [B, T, H], threshold a number or per head [H] -> visibility [B, H, T, T] (fate of key k
    decided at k+1)."""
    B, T, H = logits.shape
    flags = torch.zeros_like(logits, dtype=torch.bool)
    flags[:, :-1] = logits[:, 1:].double() > torch.as_tensor(threshold, dtype=torch.float64, device=logits.device)
    pos = torch.arange(T, device=logits.device)
    dist = pos[:, None] - pos[None, :]
    keep = (dist <= window)[None, None] | ~flags.permute(0, 2, 1)[:, :, None, :]
    return (dist >= 0)[None, None] & keep


def window_mask(B, H, T, cap: torch.Tensor, device, sinks: int = 4) -> torch.Tensor:
    pos = torch.arange(T, device=device)
    dist = pos[:, None] - pos[None, :]
    recent = (cap.to(device) + 1 - sinks).clamp(min=1).view(B, 1, 1, 1)  # sees cap + 1 entries, as the others
    vis = (pos[None, :] < sinks)[None, None] | (dist[None, None] < recent)
    return vis & (dist >= 0)[None, None]


def sequential_mask(kind: str, q: torch.Tensor, k: torch.Tensor, scale: float, cap: torch.Tensor,
                    generator: torch.Generator | None = None, stride: int = 1) -> torch.Tensor:
    """q [B, T, Hq, D] (after RoPE), k [B, T, H, D], cap [B] -> visibility [B, H, T, T].

    Tokens enter in blocks of ``stride``; after each block every row over ``cap`` drops its lowest
    scores down to ``cap`` (stride 1: the per-token policy; queries then see at most cap + 1
    entries, with a larger stride at most cap + stride). TOVA scores with the block's last query.
    """
    B, T, Hq, D = q.shape
    H = k.shape[2]
    G = Hq // H
    dev = q.device
    cap = cap.to(dev).long().view(B, 1)
    qh = q.float().view(B, T, H, G, D)
    kh = k.float().permute(0, 2, 1, 3)  # [B, H, T, D]
    mask = torch.zeros(B, H, T, T, dtype=torch.bool, device=dev)
    vis = torch.zeros(B, H, T, dtype=torch.bool, device=dev)
    acc = torch.zeros(B, H, T, device=dev)
    pos = torch.arange(T, device=dev)
    recent = (cap // 2).view(B, 1, 1)
    start = int(min(int(cap.min()) + 1, T))
    bounds = [(0, start)] + [(t, min(t + stride, T)) for t in range(start, T, stride)]
    for t0, t1 in bounds:
        vis[:, :, t0:t1] = True
        rows = vis[:, :, None, :t1] & (pos[:t1][None, :] <= pos[t0:t1][:, None])[None, None]  # [B, H, s, t1]
        mask[:, :, t0:t1, :t1] = rows
        if kind == "random":
            p = None
        else:
            qq = qh[:, t0:t1] if kind == "h2o" else qh[:, t1 - 1: t1]
            s = torch.einsum("bthgd,bhkd->bhgtk", qq, kh[:, :, :t1]) * scale
            r = rows if kind == "h2o" else rows[:, :, -1:]
            p = torch.softmax(s.masked_fill(~r[:, :, None], float("-inf")), -1).mean(2)  # [B, H, s, t1]
        v = vis[:, :, :t1]
        if kind == "tova":
            score = p[:, :, -1]
        elif kind == "h2o":
            acc[:, :, :t1] += p.sum(2)
            score = acc[:, :, :t1].masked_fill((t1 - 1 - pos[:t1]).view(1, 1, -1) < recent, float("inf"))
        elif kind == "random":
            score = torch.rand(B, H, t1, device=dev, generator=generator)
            score[:, :, t1 - 1] = float("inf")
        else:
            raise ValueError(f"unknown eviction policy {kind!r}; use one of {SEQUENTIAL}")
        score = score.masked_fill(~v, float("inf"))
        n_drop = (v.sum(-1) - cap).clamp(min=0)  # [B, H]
        ranks = torch.empty_like(score, dtype=torch.long).scatter_(-1, score.argsort(-1), pos[:t1].expand(B, H, t1))
        vis[:, :, :t1] &= ~(ranks < n_drop[..., None])
    return mask


@torch.no_grad()
def policy_forward(loaded, ids: torch.Tensor, policy: str, *, threshold: float = 0.0, cap: torch.Tensor | None = None,
                   sel: torch.Tensor | None = None, seed: int = 0, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] -> (logits [N, V] float32 at the positions ``sel`` [B, T] marks (all when None),
    kept [B, T]: the mean number of entries per (layer, KV head) row each query sees).

    policy: "dense", "dms" (at ``threshold``: a number or a [layer][kv head] grid), "window", "tova",
    "h2o", "random" (at ``cap`` [B]).
    """
    hf = loaded.hf_model
    inner, cfg = hf.model, hf.config
    B, T = ids.shape
    Hq, H = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    ids = ids.to(loaded.device)
    pos = torch.arange(T, device=ids.device)
    x = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(x, pos[None])
    cos, sin = cos[0].to(x.dtype).repeat(B, 1), sin[0].to(x.dtype).repeat(B, 1)
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    kept = torch.zeros(B, T, device=ids.device)
    for li, layer in enumerate(inner.layers):
        attn = layer.self_attn
        head = DecisionHead(loaded.dms, li, Hq, H)
        q, k, v, logits = attention_inputs(layer, head, x, cos, sin, (Hq, H, D))
        q, k, v = q.view(B, T, Hq, D), k.view(B, T, H, D), v.view(B, T, H, D)
        if policy == "dense" or (policy == "dms" and logits is None):
            vis = _causal(T, ids.device)[None, None].expand(B, H, T, T)
        elif policy == "dms":
            vis = dms_mask(logits.view(B, T, H), threshold[li] if isinstance(threshold, tuple) else threshold,
                           loaded.dms.window)
        elif policy == "window":
            vis = window_mask(B, H, T, cap, ids.device)
        else:
            vis = sequential_mask(policy, q, k, attn.scaling, cap, gen, stride)
        kept += vis.sum(-1).float().mean(1) / len(inner.layers)
        add = torch.zeros(vis.shape, dtype=torch.float32, device=ids.device).masked_fill(~vis, float("-inf"))
        o = grouped_sdpa(q, k, v, add, attn.scaling)
        x = x + attn.o_proj(o.to(x.dtype))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    x = x.reshape(B * T, -1) if sel is None else x[sel.to(x.device)]
    return hf.lm_head(inner.norm(x)).float(), kept


def kl_and_agreement(dense: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Mean KL(dense || other) and greedy agreement over rows of logits [N, V]."""
    lp, lq = F.log_softmax(dense, -1), F.log_softmax(other, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    agree = (dense.argmax(-1) == other.argmax(-1)).float().mean().item()
    return kl, agree


def exact_answers(logits: torch.Tensor, tgt: torch.Tensor, sel: torch.Tensor) -> list[bool]:
    """Per sequence: every answer token is the greedy prediction (``sel`` marks the answer's
    predecessors, ``tgt`` the tokens that follow them)."""
    ok = (logits.argmax(-1) == tgt).tolist()
    res, i = [], 0
    for n in sel.sum(1).tolist():
        res.append(all(ok[i:i + n]))
        i += n
    return res


def pad_rows(rows, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> right-padded ids [B, T] and their lengths [B]."""
    lens = torch.tensor([len(r) for r in rows])
    T = int(lens.max())
    return torch.tensor([list(r) + [pad] * (T - len(r)) for r in rows]), lens


def ratio_threshold(loaded, ratio):
    """The DMS threshold (table or number) for ``ratio``; 0.0 (the trained logit) without a table."""
    thr = loaded.dms.thresholds_for(ratio)
    return 0.0 if thr is None else thr


def baseline_caps(kept: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """kept [B, T] (mean entries a row sees) -> each sequence's budget for the baselines, so they
    keep what DMS kept."""
    return (kept[torch.arange(len(lens)), lens - 1].cpu().round().long() - 1).clamp(min=5)
