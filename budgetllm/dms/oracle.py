"""Brute-force attention over a whole sequence under the DMS mask: the oracle every path is checked against."""

from __future__ import annotations

import torch

from budgetllm.dms.mask import dms_visibility_mask


def dms_attention_bruteforce(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flags: torch.Tensor,
                             window: int, scale: float) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, H, D], flags [T, H] (fate of each token) -> out [T, Hq, D], in float64."""
    T, Hq, D = q.shape
    H = k.shape[1]
    G = Hq // H
    mask = dms_visibility_mask(flags, window)  # [H, T, T]
    mask = mask.repeat_interleave(G, dim=0)  # [Hq, T, T]
    qd, kd, vd = q.double(), k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    scores = torch.einsum("qhd,khd->hqk", qd, kd) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, vd)


@torch.no_grad()
def masked_model_forward(model, token_ids, rule) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The whole sequence in one pass with every layer's attention under the hard DMS mask.

    Physical eviction (the reference backend, the paged engine) must give the same logits at every
    position as this. Returns (logits [T, vocab] float64-accurate in float32, per-layer flags [T, H]).
    """
    from budgetllm.dms.decisions import DecisionHead, attention_inputs
    from budgetllm.dms.mask import evict_flags_from_decisions

    hf = model.hf_model
    inner = hf.model
    cfg = hf.config
    Hq, H = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    ids = torch.as_tensor(token_ids, device=model.device).view(-1)
    T = ids.shape[0]
    pos = torch.arange(T, device=ids.device)
    x = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(x[None], pos[None])
    cos, sin = cos[0].to(x.dtype), sin[0].to(x.dtype)
    all_flags = []
    for li, layer in enumerate(inner.layers):
        attn = layer.self_attn
        head = DecisionHead(model.dms, li, Hq, H)
        q, k, v, logits = attention_inputs(layer, head, x, cos, sin, (Hq, H, D))
        flags = evict_flags_from_decisions(rule.decide(logits, pos, H, layer=li))
        all_flags.append(flags)
        o = dms_attention_bruteforce(q, k, v, flags, rule.window, attn.scaling).to(x.dtype)
        x = x + attn.o_proj(o.reshape(T, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return hf.lm_head(inner.norm(x)).float(), all_flags
