"""Fused decoder modules of the paged engine for Llama, Qwen2 and Qwen3, with DMS decisions.

The weights are those of the loaded HF model, rearranged once: q/k/v into one [(Hq+2H)*D, hidden]
matrix and gate/up into one [2I, hidden] matrix (one GEMM each instead of three and two). With
``share_weights`` the HF linear layers are re-pointed at views of the fused tensors, so the HF model
(still used by the reference backend and for calibration) costs no extra memory.

RoPE uses the HF rotary module itself (inv_freq and attention_scaling already include the
family's scaling: default, llama3, YaRN, ...) to build a [max_positions, D] cos/sin table in the
model dtype; the fused q/k kernel reads rows of it by position, so positions come from GPU memory.

Between the GEMMs a layer runs three fused Triton kernels (``budgetllm.kernels.fused_decoder``:
residual add + RMSNorm, q/k norm + decision logits + RoPE + decisions, silu * up) that reproduce
the eager torch ops' roundings; the maths follows ``budgetllm.engine.reference`` op for op (same
norms, same decision logits, the borrowed channel zeroed before and after RoPE), so both backends agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from budgetllm.kernels import add_rms_norm, qkv_rope, silu_mul
from budgetllm.kernels.adapter_logits import adapter_logits
from budgetllm.models.loading import LoadedModel


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
    alpha: dict | None = None  # adapter variant: the layer's adapter weights in float32 (converted once)


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
        self.silu = getattr(cfg, "hidden_act", "silu") == "silu"  # fused silu_mul; other activations eager
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
            out.alpha = {k: (v.float().contiguous() if v is not None else None) for k, v in self.dms.adapter_weights[i].items()}
        return out

    # -- pieces of a forward ----------------------------------------------------------------
    # The residual stream x and its normed copy h travel together: every residual add is fused
    # with the norm that follows it (one kernel), so a layer is 5 GEMMs + 4 small kernels + attention.
    def embed_norm(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [N] -> (x, h): the embeddings and layer 0's input norm of them."""
        x = F.embedding(ids, self.embed_w)
        return add_rms_norm(x, None, self.layers[0].in_norm, self.eps)

    def attention_inputs(self, li: int, x: torch.Tensor, h: torch.Tensor, pos: torch.Tensor,
                         decide: tuple | None):
        """h (normed x) [N, hidden], pos [N] -> q [N,Hq,D], k [N,H,D] (post-RoPE), v [N,H,D] (a view),
        decisions [N,H] int8 | None.

        ``decide`` = (thr [L, N, H] float64: each (layer, KV head)'s threshold, base [N,H] bool,
        uses_thr [N,1] bool) from :func:`budgetllm.engine.rules.step_decisions`; None -> no decisions
        (the caller uses ``base`` when the model has no decision logits)."""
        L = self.layers[li]
        return self.rope_decide(li, F.linear(h, L.qkv_w, L.qkv_b), x, pos, decide)

    def rope_decide(self, li: int, qkv: torch.Tensor, x: torch.Tensor, pos: torch.Tensor, decide: tuple | None,
                    pdl: bool = False):
        """The part of :meth:`attention_inputs` after the QKV GEMM (``qkv`` [N, (Hq+2H)*D]); the
        decode path of ``budgetllm.engine.paged.decode_layer`` makes ``qkv`` with its own GEMM (``pdl``:
        launch the fused kernel with programmatic dependent launch)."""
        L = self.layers[li]
        Hq, H, D = self.Hq, self.H, self.D
        v = qkv[:, (Hq + H) * D:].view(-1, H, D)
        s = self.dms
        borrowed, kernel_decide = self.rope_args(li, x, decide)
        if decide is not None:
            decide = (decide[0][li] if decide[0].dim() == 3 else decide[0], *decide[1:])
        if self.borrowed and s.alpha_per == "layer" and decide is not None:
            # KV head 0 decides for the layer: the kernel gives the logits, the rule is applied here
            q, k, lg, _ = qkv_rope(qkv, self.cos, self.sin_signed, pos, Hq, H, D, qk_norm=L.qk_norm, eps=self.eps,
                                   borrowed=borrowed)
            thr, base, uses = decide  # as rules.layer_decisions
            thr = thr if thr.dim() == 2 else thr[:, None]
            return q, k, v, torch.where(uses.reshape(-1, 1), s.per_layer(lg) > thr, base).to(torch.int8)
        q, k, _, dec = qkv_rope(qkv, self.cos, self.sin_signed, pos, Hq, H, D, qk_norm=L.qk_norm, eps=self.eps,
                                borrowed=borrowed, decide=kernel_decide, pdl=pdl)
        return q, k, v, dec

    def rope_args(self, li: int, x: torch.Tensor, decide: tuple | None):
        """``(borrowed, decide)`` arguments of ``qkv_rope`` (and of the fused ``kernels.qkv_store``) for
        layer ``li``: ``decide`` is None when the layer's decisions need no logits (then the step's
        base decisions apply); the adapter's logits are computed here from the residual stream ``x``
        (its own norm, float32; ``DMSSpec.adapter_logits`` is their definition and the reference's path). The per-layer borrowed variant decides outside the kernel
        (:meth:`rope_decide`)."""
        s = self.dms
        borrowed = (self.G, float(s.alpha_scale), float(s.alpha_offset)) if self.borrowed else None
        if decide is None or not (self.borrowed or self.adapter):
            return borrowed, None
        a = self.layers[li].alpha
        logits_in = None  # the adapter's logits in one kernel (kernels.adapter_logits; was ~9 eager ops)
        if self.adapter:
            logits_in = adapter_logits(x, a["norm_weight"], a["proj_weight"], a.get("proj_bias"), s.norm_eps,
                                       s.alpha_scale, s.alpha_offset, s.alpha_per == "layer")
        return borrowed, (decide[0][li] if decide[0].dim() == 3 else decide[0], *decide[1:], logits_in)

    def attention_out(self, li: int, x: torch.Tensor, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """o [N, Hq, D] -> (x + o_proj(o), its post-attention norm)."""
        L = self.layers[li]
        return add_rms_norm(F.linear(o.reshape(o.shape[0], -1), L.o_w, L.o_b), x, L.post_norm, self.eps)

    def mlp(self, li: int, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x + mlp(h), the next layer's input norm of it (the final norm after the last layer))."""
        L = self.layers[li]
        gate_up = F.linear(h, L.gate_up_w)
        act = silu_mul(gate_up) if self.silu else self._act_mul(gate_up)
        nxt = self.layers[li + 1].in_norm if li + 1 < self.num_layers else self.norm_w
        return add_rms_norm(F.linear(act, L.down_w), x, nxt, self.eps)

    def _act_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act(gate) * up

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: the final-normed stream (from the last :meth:`mlp`) -> float32 logits."""
        return F.linear(h, self.lm_head_w).float()


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
