"""The training forward: a whole batch through the HF model's weights with the soft DMS mask.

Same semantics as inference (``budgetllm.engine.reference``): decision logits come from
:class:`~budgetllm.dms.decisions.DecisionHead` (float32, autocast off), the borrowed channel is
stripped before and after :func:`~budgetllm.dms.decisions.apply_rope`, the decision made at token
t+1 is the fate of token t, and a key k stays fully visible to query q while q - k <= window.

Training mask (docs/notes/dms.md §1.3): outside the window, key k gets the additive bias
log(1 - sigmoid(z_{k+1})) with z = (logit + logistic noise) / tau. Attention takes an additive
[B, H, G*T, T] mask (the G query heads of a GQA group are stacked along the query axis, so K/V are
not repeated); fine for the <= 4K-token training lengths used here. When the mask needs gradients
it runs as explicit matmul + softmax (torch 2.11's memory-efficient SDPA backward rejected this
layout on the H100: "LSE is not correctly aligned"); otherwise through SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from budgetllm.dms.decisions import DecisionHead, attention_inputs


@dataclass
class ForwardOut:
    hidden: torch.Tensor  # [B, T, hidden] after the final norm
    relaxed: list[torch.Tensor]  # per layer z = (logit + noise) / tau, [B, T, H] float32 (empty in teacher mode)


def logistic_noise(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Gumbel(0,1) - Gumbel(0,1), i.e. standard logistic noise (float32)."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def soft_mask_bias(relaxed: torch.Tensor) -> torch.Tensor:
    """z [B, T, H] (decision made at token t) -> key bias [B, H, T] = log(1 - sigmoid(z_{k+1})).

    The last key's fate is not known yet: bias 0 (it is inside the window of every query anyway).
    """
    bias = F.logsigmoid(-relaxed[:, 1:])  # fate of keys 0..T-2
    bias = torch.cat([bias, torch.zeros_like(relaxed[:, :1])], dim=1)
    return bias.permute(0, 2, 1)


def soft_attention_mask(key_bias: torch.Tensor | None, window: int, T: int, device) -> torch.Tensor:
    """Additive mask [B, H, T, T] (float32): -inf above the diagonal, key_bias outside the window.

    key_bias None gives the plain causal mask [1, 1, T, T].
    """
    pos = torch.arange(T, device=device)
    dist = pos[:, None] - pos[None, :]
    causal = torch.zeros(T, T, device=device).masked_fill(dist < 0, float("-inf"))
    if key_bias is None:
        return causal[None, None]
    outside = (dist > window)[None, None]
    return torch.where(outside, key_bias[:, :, None, :], 0.0) + causal[None, None]


def grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 scale: float) -> torch.Tensor:
    """q [B, T, Hq, D], k/v [B, T, H, D], mask [B|1, H|1, T, T] additive or None (causal).

    Returns [B, T, Hq*D]. Query head i uses KV head i // G (the HF repeat_kv convention).
    """
    B, T, Hq, D = q.shape
    H = k.shape[2]
    G = Hq // H
    qg = q.view(B, T, H, G, D).permute(0, 2, 3, 1, 4).reshape(B, H, G * T, D)
    kh, vh = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
    if mask is None:
        mask = soft_attention_mask(None, 0, T, q.device)
    full = mask.to(q.dtype).unsqueeze(2).expand(mask.shape[0], mask.shape[1], G, T, T)
    full = full.expand(B, H, G, T, T).reshape(B, H, G * T, T)
    if full.requires_grad:  # explicit math: the fused kernels' mask-gradient paths are not dependable
        att = torch.matmul(qg, kh.transpose(-1, -2)).float() * scale + full.float()
        out = torch.matmul(torch.softmax(att, dim=-1).to(vh.dtype), vh)
    else:
        out = F.scaled_dot_product_attention(qg, kh, vh, attn_mask=full, scale=scale)
    return out.view(B, H, G, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, Hq * D)


def _layer(layer, head: DecisionHead, x, cos, sin, noise, window: int, tau: float, teacher: bool, shape):
    B, T, _ = x.shape
    Hq, H, D = shape
    attn = layer.self_attn
    q, k, v, logits = attention_inputs(layer, head, x, cos, sin, shape)
    v = v.view(B, T, H, D)
    relaxed = None
    mask = None
    if not teacher and logits is not None:
        relaxed = (logits.view(B, T, H) + noise) / tau
        mask = soft_attention_mask(soft_mask_bias(relaxed), window, T, x.device)
    o = grouped_sdpa(q.view(B, T, Hq, D), k.view(B, T, H, D), v, mask, attn.scaling)
    x = x + attn.o_proj(o)
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    return x, relaxed


def dms_train_forward(hf_model, spec, ids: torch.Tensor, *, window: int, tau: float,
                      noise: torch.Tensor | None = None, teacher: bool = False,
                      grad_checkpointing: bool = False) -> ForwardOut:
    """ids [B, T] -> final hidden states and per-layer relaxed decisions.

    spec: a DMSSpec whose ``adapter_weights`` may hold trainable tensors (adapter variant).
    noise: [L, B, T, H] logistic noise (zeros = deterministic relaxation); ignored in teacher mode.
    teacher: eviction off (the dense model, borrowed channel still stripped).
    """
    inner = hf_model.model
    cfg = hf_model.config
    B, T = ids.shape
    Hq, H = cfg.num_attention_heads, cfg.num_key_value_heads
    shape = (Hq, H, getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq)
    pos = torch.arange(T, device=ids.device)
    x = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(x, pos[None])
    cos, sin = cos[0].to(x.dtype), sin[0].to(x.dtype)
    cos, sin = cos.repeat(B, 1), sin.repeat(B, 1)  # batch flattened into tokens: [B*T, D]
    relaxed_all: list[torch.Tensor] = []
    for li, layer in enumerate(inner.layers):
        head = DecisionHead(spec, li, Hq, H)
        n = None if (teacher or noise is None) else noise[li]
        if n is None and not teacher:
            n = torch.zeros(B, T, H, device=ids.device)
        if grad_checkpointing and torch.is_grad_enabled():
            x, relaxed = checkpoint(_layer, layer, head, x, cos, sin, n, window, tau, teacher, shape,
                                     use_reentrant=False)
        else:
            x, relaxed = _layer(layer, head, x, cos, sin, n, window, tau, teacher, shape)
        if relaxed is not None:
            relaxed_all.append(relaxed)
    return ForwardOut(inner.norm(x), relaxed_all)


def chunked_kl(lm_head, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
               chunk: int = 512) -> torch.Tensor:
    """Mean over positions of KL(student || teacher) = sum p_s (log p_s - log p_t), as NVIDIA's
    ``distillation_loss``; logits are made per chunk of positions (checkpointed) to bound memory."""

    def part(s_h, t_h):
        s = F.log_softmax(lm_head(s_h).float(), dim=-1)
        with torch.no_grad():
            t = F.log_softmax(lm_head(t_h).float(), dim=-1)
        return (s.exp() * (s - t)).sum(-1).sum()

    B, T, _ = student_hidden.shape
    total = student_hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, T, chunk):
        s_h, t_h = student_hidden[:, i:i + chunk], teacher_hidden[:, i:i + chunk]
        total = total + (checkpoint(part, s_h, t_h, use_reentrant=False) if torch.is_grad_enabled() else part(s_h, t_h))
    return total / (B * T)
