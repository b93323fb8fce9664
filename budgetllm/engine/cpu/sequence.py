"""The CPU backend's forward: the decoder layers run directly on ``CPUWeights``, over a RowCache.

:class:`CPUSequence` has the interface of
``budgetllm.engine.reference.sequence.ReferenceSequence`` (``forward``, ``fork``, ``seen``, ``ids``,
``live_entries``, ``row_lengths``, ``logit_log``) and the same maths op for op: the norms, the
decision logits of both DMS variants (``DecisionHead.logits``), the borrowed channel zeroed before
and after RoPE, the rule's decisions (``EvictionRule.decide``), attention in float32. What differs
is the layout: one attention call per layer over every KV head (no Python loop over heads), and
no HF module in the step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from budgetllm.engine.cpu.cache import RowCache
from budgetllm.engine.eviction import EvictionRule

if TYPE_CHECKING:
    from budgetllm.engine.cpu.backend import CPUWeights


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
