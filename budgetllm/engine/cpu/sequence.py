"""The CPU backend's forward: the decoder layers run directly on fused weights, over a RowCache.

:class:`CPUWeights` rearranges the loaded HF model's weights once (q/k/v into one matrix, gate/up
into one; the HF linear layers are re-pointed at views of the fused tensors, so nothing is copied
twice and the HF model keeps working). :class:`CPUSequence` has the interface of
``budgetllm.engine.reference.ReferenceSequence`` (``forward``, ``fork``, ``seen``, ``ids``,
``live_entries``, ``row_lengths``, ``logit_log``) and the same maths op for op: the norms, the
decision logits of both DMS variants (``DecisionHead.logits``), the borrowed channel zeroed before
and after RoPE, the rule's decisions (``EvictionRule.decide``), attention in float32. What differs
is the layout: one attention call per layer over every KV head (no Python loop over heads), and
no HF module in the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from budgetllm.dms.decisions import DecisionHead
from budgetllm.engine.cpu.cache import RowCache
from budgetllm.engine.eviction import EvictionRule
from budgetllm.models.loading import LoadedModel


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


class CPUSequence:
    """One sequence's compressed cache and its forward pass (the ReferenceSequence interface)."""

    def __init__(self, weights: CPUWeights, rule: EvictionRule, collect_logits: bool = False,
                 last_logits_only: bool = False):
        self.w = weights
        self.rule = rule
        self.num_layers, self.num_kv_heads = len(weights.layers), weights.H
        self.cache = RowCache(self.num_layers, weights.H, weights.D, rule.window, weights.dtype, weights.device)
        self.ids: list[int] = []
        self.collect_logits = collect_logits
        self.last_logits_only = last_logits_only
        self.logit_log: list[torch.Tensor] = []
        # decisions that need no logits are the same in every layer: computed once per forward
        self._layer_independent = not (rule.mode == "dms" and rule.evicts and weights.loaded.dms.has_decisions)

    @property
    def seen(self) -> int:
        return self.cache.seen

    def fork(self) -> CPUSequence:
        twin = CPUSequence.__new__(CPUSequence)
        twin.__dict__.update(self.__dict__)
        twin.cache = self.cache.fork()
        twin.ids = list(self.ids)
        twin.logit_log = []
        return twin

    def live_entries(self) -> int:
        return self.cache.live_entries()

    def row_lengths(self) -> list[list[int]]:
        return self.cache.lens.tolist()

    @torch.inference_mode()
    def forward(self, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run new tokens on top of the cache. Returns float32 logits [n, vocab] ([1, vocab]: the last
        token's, with ``last_logits_only``)."""
        W, cache = self.w, self.cache
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=W.device).view(-1)
        n = ids.shape[0]
        pos = torch.arange(cache.seen, cache.seen + n, device=ids.device)
        x = F.embedding(ids, W.embed_w)
        cos, sin = W.rotary(x[None], pos[None])
        cos, sin = cos[0].to(x.dtype), sin[0].to(x.dtype)
        half = sin.shape[-1] // 2  # rotate_half(x) * sin == roll(x, D/2) * sin_signed, exactly
        cos, sin_signed = cos[:, None], torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)[:, None]
        Hq, H, D, G = W.Hq, W.H, W.D, W.G
        decisions = self.rule.decide(None, pos, H) if self._layer_independent else None
        step = n == 1 and self.rule.window >= 1  # the ring step (w = 0 would reuse a slot decided this step)
        if step:
            slots, masks = cache.plan_decode()
            M, step_decisions = masks.shape[-1], []
        for li, L in enumerate(W.layers):
            h = W.rms(x, L.in_norm)
            qkv = h @ L.qkv_t if L.qkv_b is None else torch.addmm(L.qkv_b, h, L.qkv_t)
            qk = qkv[:, :(Hq + H) * D].view(n, Hq + H, D)
            v = qkv[:, (Hq + H) * D:].view(n, H, D)
            if L.qk_norm is not None:
                qk = W.rms(qk, L.qk_norm)
            logits = None if self._layer_independent and not self.collect_logits else \
                L.head.logits(qk[:, :Hq], x)
            if self.collect_logits and logits is not None:
                self.logit_log.append(logits.detach())
            dec = decisions if decisions is not None else self.rule.decide(logits, pos, H, layer=li)
            if L.head.borrowed:  # the borrowed channel is no part of attention: zero before and after RoPE
                qk[:, 0:Hq:G, -1] = 0
            qk = qk * cos + qk.roll(half, dims=-1) * sin_signed  # RoPE (dms.decisions.apply_rope)
            if L.head.borrowed:
                qk[:, 0:Hq:G, -1] = 0
            q, k = qk[:, :Hq], qk[:, Hq:]
            if step:
                keys, vals = cache.store_decode(li, k[0], v[0], slots, M)
                step_decisions.append(dec[0])
                scores = torch.baddbmm(masks[li], q[0].float().view(H, G, D), keys.float().transpose(1, 2),
                                       alpha=W.scale)  # [H, G, M]: the G query heads of a KV head share its row
                o = torch.bmm(torch.softmax(scores, dim=-1), vals.float()).to(x.dtype)
            else:
                o = cache.attend_chunk(li, q, k, v, dec, pos, W.scale)
            o = o.reshape(n, Hq * D) @ L.o_t
            x = x + (o if L.o_b is None else o + L.o_b)
            h = W.rms(x, L.post_norm)
            gate, up = (h @ L.gate_up_t).chunk(2, dim=-1)
            x = x + (W.act(gate) * up) @ L.down_t
        if step:
            cache.end_decode(slots, torch.stack(step_decisions))
        else:
            cache.end_chunk(n)
        self.ids.extend(ids.tolist())
        if self.last_logits_only:
            x = x[-1:]
        return (W.rms(x, W.norm_w) @ W.lm_head_t).float()
