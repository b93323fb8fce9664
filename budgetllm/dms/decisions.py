"""Eviction decision logits for both DMS variants (docs/notes/dms.md §1.1)."""

from __future__ import annotations

import torch

from budgetllm.models.dms_spec import DMSSpec


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D]; cos, sin: [T, D] (the Llama/Qwen rotate-half convention)."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


class DecisionHead:
    """Computes one eviction logit per (token, KV head) for one layer.

    Borrowed channel: ``logit = q[:, head kv*G, D-1] * scale - offset`` taken after q_norm and
    before RoPE; that channel is then zeroed before and after RoPE (it is not part of attention,
    also at compression 1, because it is part of the checkpoint's architecture).
    Adapter: ``logit = dms_proj_alpha(RMSNorm(h)) * scale - offset`` on the residual stream h
    before the layer's input norm. With ``alpha_per="layer"`` KV head 0's logit stands for every head.
    """

    def __init__(self, spec: DMSSpec, layer: int, num_heads: int, num_kv_heads: int):
        self.spec = spec
        self.layer = layer
        self.group = num_heads // num_kv_heads
        self.weights = spec.adapter_weights[layer] if spec.variant == "adapter" else None

    @property
    def borrowed(self) -> bool:
        return self.spec.variant == "borrowed"

    def logits(self, q_pre_rope: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor | None:
        """q_pre_rope: [T, Hq, D] (after q_norm); residual: [T, hidden]. Returns [T, H] float32."""
        s = self.spec
        if s.variant == "borrowed":
            return s.per_layer(q_pre_rope[:, :: self.group, -1].float() * s.alpha_scale - s.alpha_offset)
        if s.variant == "adapter":
            return s.adapter_logits(residual, self.weights)
        return None

    def strip_channel(self, q: torch.Tensor) -> torch.Tensor:
        """Zero the borrowed channel (call before and after RoPE). No-op for other variants."""
        if self.borrowed:
            q = q.clone()
            q[:, :: self.group, -1] = 0
        return q


def attention_inputs(layer, head: DecisionHead, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     shape: tuple[int, int, int]):
    """An HF decoder layer's attention inputs as DMS sees them (reference backend, oracle, trainer
    and quality evaluation all use this one definition).

    x: ``[..., hidden]`` residual stream (N = its rows); cos, sin: ``[N, D]``; shape: (Hq, H, D).
    Returns q ``[N, Hq, D]`` and k ``[N, H, D]`` after the layer's norms and RoPE (the borrowed
    channel zeroed before and after RoPE), v ``[N, H, D]``, and the decision logits ``[N, H]``
    float32 (None for a model without decisions).
    """
    Hq, H, D = shape
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).reshape(-1, Hq, D)
    k = attn.k_proj(h).reshape(-1, H, D)
    v = attn.v_proj(h).reshape(-1, H, D)
    if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    with torch.autocast(x.device.type, enabled=False):  # float32 decisions even under training autocast
        logits = head.logits(q, x.reshape(q.shape[0], -1))
    q = head.strip_channel(q)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return head.strip_channel(q), k, v, logits
