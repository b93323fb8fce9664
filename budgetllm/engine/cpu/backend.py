"""The CPU backend: the reference backend's request loop over :class:`CPUSequence`, and the weights
it reads (:class:`CPUWeights`: q/k/v fused into one matrix, gate/up into one, all stored transposed).

Everything a request does besides the forward (prefix reuse of earlier turns, thinking budgets,
sampling, stop, cancellation, KV accounting) is ``ReferenceBackend``'s own code, so both backends
behave the same by construction; the forward differs only in layout and speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from budgetllm.dms.decisions import DecisionHead
from budgetllm.engine.cpu.sequence import CPUSequence
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.reference.backend import ReferenceBackend
from budgetllm.errors import InvalidRequestError
from budgetllm.models.loading import LoadedModel


class CPUBackend(ReferenceBackend):
    """Decodes on the CPU with one attention call per layer over all KV heads (padded rows, per-head lengths)."""

    name = "cpu"

    def __init__(self, model: LoadedModel, prefix_cache: bool = True):
        if model.device.type != "cpu":
            raise InvalidRequestError("backend", f"the cpu backend runs on the CPU, the model is on "
                                      f"{model.device}; use backend='paged' or 'reference'")
        super().__init__(model, prefix_cache=prefix_cache)
        self.weights = CPUWeights(model)

    def new_sequence(self, rule: EvictionRule, collect_logits: bool = False) -> CPUSequence:
        # requests read only the last token's logits; calibration reads only the decision logits
        return CPUSequence(self.weights, rule, collect_logits=collect_logits, last_logits_only=True)


@dataclass
class _Layer:
    in_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv_t: torch.Tensor  # [hidden, (Hq + 2H) * D]: weights are stored transposed (see CPUWeights)
    qkv_b: torch.Tensor | None
    o_t: torch.Tensor
    o_b: torch.Tensor | None
    gate_up_t: torch.Tensor
    down_t: torch.Tensor
    qk_norm: torch.Tensor | None  # Qwen3: [Hq + H, D], q_norm's weight on q heads, k_norm's on k heads
    head: DecisionHead


class CPUWeights:
    """The model's weights as the CPU forward reads them (built once per backend).

    Every linear weight is stored transposed, ``[in, out]`` contiguous: at batch 1 a product
    ``x @ W_t`` streams the weight row by row, which measured ~1.3x faster on CPU than ``F.linear``
    over the ``[out, in]`` layout (bench/NOTES.md). q/k/v are fused into one matrix and gate/up into
    one. The HF modules are re-pointed at (transposed) views of these tensors, so the model's
    memory does not double and the HF model keeps working (same values, another layout)."""

    def __init__(self, loaded: LoadedModel):
        from transformers.activations import ACT2FN

        hf = loaded.hf_model
        inner, cfg = hf.model, hf.config
        self.loaded, self.dtype, self.device = loaded, loaded.dtype, loaded.device
        self.Hq, self.H = cfg.num_attention_heads, cfg.num_key_value_heads
        self.G = self.Hq // self.H
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.Hq
        self.eps = float(cfg.rms_norm_eps)
        self.scale = float(inner.layers[0].self_attn.scaling)
        self.act = ACT2FN[getattr(cfg, "hidden_act", "silu")]
        self.rotary = inner.rotary_emb
        self.layers = [self._fuse(i, layer) for i, layer in enumerate(inner.layers)]
        self.norm_w = inner.norm.weight
        self.lm_head_t = _transpose_linears([hf.lm_head])  # tied embeddings: the embedding is a view of it
        self.embed_w = inner.embed_tokens.weight

    def _fuse(self, i: int, layer) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(mlp.gate_proj, "bias", None) is not None:
            raise NotImplementedError("MLP biases are not supported by the CPU backend")
        projs = [attn.q_proj, attn.k_proj, attn.v_proj]
        qkv_b = torch.cat([p.bias.data for p in projs]) if attn.q_proj.bias is not None else None
        if qkv_b is not None:
            _repoint_biases(projs, qkv_b)
        return _Layer(
            in_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
            qkv_t=_transpose_linears(projs), qkv_b=qkv_b, o_t=_transpose_linears([attn.o_proj]),
            o_b=attn.o_proj.bias, gate_up_t=_transpose_linears([mlp.gate_proj, mlp.up_proj]),
            down_t=_transpose_linears([mlp.down_proj]),
            qk_norm=torch.cat([attn.q_norm.weight[None].expand(self.Hq, -1),
                               attn.k_norm.weight[None].expand(self.H, -1)]).contiguous()
            if hasattr(attn, "q_norm") else None,
            head=DecisionHead(self.loaded.dms, i, self.Hq, self.H))

    def rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The HF RMSNorm (statistics in float32, the weight applied in the input dtype); in float32
        torch's fused op, which gives the same bits as HF's sequence of ops and costs one dispatch."""
        if x.dtype == torch.float32:
            if weight.dim() == 1:
                return F.rms_norm(x, weight.shape, weight, self.eps)
            return weight * F.rms_norm(x, weight.shape[-1:], None, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)


def _transpose_linears(linears) -> torch.Tensor:
    """``[in, sum(out)]`` contiguous: the linears' weights side by side, transposed; each linear is
    re-pointed at its (transposed) view, so its own forward still computes the same product."""
    parts = [lin.weight for lin in linears]
    if len(parts) == 1 and parts[0].t().is_contiguous():
        return parts[0].data.t()  # already transposed (a second backend on the same model)
    fused = torch.cat([p.data for p in parts]).t().contiguous()
    start = 0
    for p in parts:
        p.data = fused[:, start:start + p.shape[0]].t()
        start += p.shape[0]
    return fused


def _repoint_biases(linears, fused: torch.Tensor) -> None:
    start = 0
    for lin in linears:
        lin.bias.data = fused[start:start + lin.bias.shape[0]]
        start += lin.bias.shape[0]
