"""Fused decoder modules of the paged engine for Llama, Qwen2 and Qwen3, with DMS decisions.

The weights are those of the loaded HF model, rearranged once: q/k/v into one [(Hq+2H)*D, hidden]
matrix and gate/up into one [2I, hidden] matrix (one GEMM each instead of three and two). With
``share_weights`` the HF linear layers are re-pointed at views of the fused tensors, so the HF model
(still used by the reference backend and for calibration) costs no extra memory.

RoPE uses the HF rotary module itself (inv_freq and attention_scaling already include the
family's scaling: default, llama3, YaRN, ...) to build a [max_positions, D] cos/sin table in the
model dtype; a step gathers rows of it by position, so positions come from GPU memory.

The maths follows ``budgetllm.engine.reference`` op for op (same norms, same decision logits, the
borrowed channel zeroed before and after RoPE), so both backends agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from budgetllm.models.loading import LoadedModel


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalise in float32, cast back, then scale (the HF module's two roundings).

    torch's rms_norm without a weight does the first part in one kernel (fused on CUDA; 8 eager
    kernels otherwise, which matter in a launch-bound decode step); the weight is applied after the
    cast, as HF does. ``weight`` may hold one row per head ([heads, D], Qwen3's q/k norms)."""
    return F.rms_norm(x, (x.shape[-1],), None, eps) * weight


@dataclass
class FusedLayer:
    in_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    gate_up_w: torch.Tensor
    down_w: torch.Tensor
    qk_norm: torch.Tensor | None  # Qwen3: [Hq + H, D], q_norm's weight on q heads, k_norm's on k heads
    alpha_norm: torch.Tensor | None = None  # adapter variant: float32 weights
    alpha_w: torch.Tensor | None = None
    alpha_b: torch.Tensor | None = None


class FusedModel:
    """Holds the fused weights and runs the pieces of one forward; the runner adds attention."""

    def __init__(self, loaded: LoadedModel, max_positions: int, share_weights: bool = True):
        hf = loaded.hf_model
        inner = hf.model
        cfg = hf.config
        self.dtype, self.device = loaded.dtype, loaded.device
        self.num_layers = cfg.num_hidden_layers
        self.Hq, self.H = cfg.num_attention_heads, cfg.num_key_value_heads
        self.G = self.Hq // self.H
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.Hq
        self.eps = float(cfg.rms_norm_eps)
        self.scale = float(inner.layers[0].self_attn.scaling)
        self.vocab = cfg.vocab_size
        self.dms = loaded.dms
        self.borrowed = loaded.dms.variant == "borrowed"
        self.adapter = loaded.dms.variant == "adapter"
        self.act = _activation(cfg)
        self.embed_w = inner.embed_tokens.weight
        self.norm_w = inner.norm.weight
        self.lm_head_w = hf.lm_head.weight
        self.layers = [self._fuse(i, layer, share_weights) for i, layer in enumerate(inner.layers)]
        self.cos, sin = _rope_table(inner.rotary_emb, max_positions, self.D, self.dtype, self.device)
        # rotate_half(x) * sin == roll(x, D/2) * sin_signed exactly (negation is exact): 1 kernel, not 2
        half = self.D // 2
        self.sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1).contiguous()

    def _fuse(self, i: int, layer, share: bool) -> FusedLayer:
        attn, mlp = layer.self_attn, layer.mlp
        projs = [attn.q_proj, attn.k_proj, attn.v_proj]
        qkv_w = torch.cat([p.weight.data for p in projs]).contiguous()
        qkv_b = torch.cat([p.bias.data for p in projs]).contiguous() if attn.q_proj.bias is not None else None
        gate_up_w = torch.cat([mlp.gate_proj.weight.data, mlp.up_proj.weight.data]).contiguous()
        if getattr(mlp.gate_proj, "bias", None) is not None:
            raise NotImplementedError("MLP biases are not supported by the paged engine")
        if share:  # the HF modules keep working, on views of the fused tensors
            _repoint(projs, qkv_w, qkv_b)
            _repoint([mlp.gate_proj, mlp.up_proj], gate_up_w, None)
        out = FusedLayer(
            in_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
            qkv_w=qkv_w, qkv_b=qkv_b, o_w=attn.o_proj.weight, o_b=attn.o_proj.bias,
            gate_up_w=gate_up_w, down_w=mlp.down_proj.weight,
            qk_norm=torch.cat([attn.q_norm.weight.data[None].expand(self.Hq, -1),
                               attn.k_norm.weight.data[None].expand(self.H, -1)]).contiguous()
            if hasattr(attn, "q_norm") else None,
        )
        if self.adapter:
            w = self.dms.adapter_weights[i]
            out.alpha_norm = w["norm_weight"].float()
            out.alpha_w = w["proj_weight"].float()
            out.alpha_b = w["proj_bias"].float() if w.get("proj_bias") is not None else None
        return out

    # -- pieces of a forward ----------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_w)

    def rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, 1, D] for positions [N] (gathered once per step, shared by every layer)."""
        return self.cos[pos][:, None, :], self.sin_signed[pos][:, None, :]

    def qkv(self, li: int, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """x [N, hidden] (residual stream), rope from :meth:`rope` -> q [N,Hq,D], k/v [N,H,D] (post-RoPE),
        decision logits [N,H] float32 | None."""
        L = self.layers[li]
        N, D, Hq, H = x.shape[0], self.D, self.Hq, self.H
        h = rms_norm(x, L.in_norm, self.eps)
        qkv = F.linear(h, L.qkv_w, L.qkv_b)
        # q and k go through norm and RoPE together (same per-head maths, half the kernels); the
        # kernels take strided q/k/v, so no copies are made.
        qk = qkv[:, : (Hq + H) * D].view(N, Hq + H, D)
        v = qkv[:, (Hq + H) * D :].view(N, H, D)
        if L.qk_norm is not None:  # Qwen3: q_norm on the q heads, k_norm on the k heads
            qk = rms_norm(qk, L.qk_norm, self.eps)
        logits = None
        s = self.dms
        if self.borrowed:
            logits = qk[:, :Hq : self.G, -1].float() * s.alpha_scale - s.alpha_offset
            qk[:, :Hq : self.G, -1] = 0  # qk is this step's own buffer: zeroing in place is safe
        elif self.adapter:
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + s.norm_eps) * L.alpha_norm
            logits = F.linear(xf, L.alpha_w, L.alpha_b) * s.alpha_scale - s.alpha_offset
        cos, sin = rope
        qk = qk * cos + torch.roll(qk, self.D // 2, dims=-1) * sin
        if self.borrowed:
            qk[:, :Hq : self.G, -1] = 0
        return qk[:, :Hq], qk[:, Hq:], v, logits

    def out_mlp(self, li: int, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """o [N, Hq, D] attention output -> the next residual stream."""
        L = self.layers[li]
        x = x + F.linear(o.reshape(o.shape[0], -1), L.o_w, L.o_b)
        h = rms_norm(x, L.post_norm, self.eps)
        gate, up = F.linear(h, L.gate_up_w).chunk(2, dim=-1)
        return x + F.linear(self.act(gate) * up, L.down_w)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(x, self.norm_w, self.eps), self.lm_head_w).float()


def _activation(cfg):
    from transformers.activations import ACT2FN

    return ACT2FN[getattr(cfg, "hidden_act", "silu")]


def _repoint(linears, fused_w: torch.Tensor, fused_b: torch.Tensor | None) -> None:
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight.data = fused_w[start:start + n]
        if fused_b is not None:
            lin.bias.data = fused_b[start:start + n]
        start += n


@torch.inference_mode()
def _rope_table(rotary, max_positions: int, D: int, dtype: torch.dtype, device: torch.device):
    """cos/sin [max_positions, D] in the model dtype, from the HF rotary module (scaling included)."""
    cos, sin = [], []
    dummy = torch.zeros(1, 1, D, dtype=dtype, device=device)
    for start in range(0, max_positions, 8192):
        pos = torch.arange(start, min(max_positions, start + 8192), device=device)[None]
        c, s = rotary(dummy, pos)
        cos.append(c[0].to(dtype))
        sin.append(s[0].to(dtype))
    return torch.cat(cos).contiguous(), torch.cat(sin).contiguous()
