"""The reference backend: pure PyTorch over the HF model, any device, really dropping evicted tokens.

Each (layer, KV head) row of a sequence keeps its own K/V tensors and length. A chunk of new tokens
(a prefill, a decode step, or a later turn on top of the cache) attends to the row's kept entries
and to the chunk itself under the DMS mask; afterwards every entry that can never be seen again
(flagged and more than ``window`` behind the newest token) is removed from the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from budgetllm.dms.decisions import DecisionHead, attention_inputs
from budgetllm.engine.eviction import EvictionRule
from budgetllm.models.loading import LoadedModel


@dataclass
class Row:
    k: torch.Tensor  # [n, D]
    v: torch.Tensor  # [n, D]
    pos: torch.Tensor  # [n] int64, logical positions
    flag: torch.Tensor  # [n] bool, evict flags (False = keep or not decided yet)


class ReferenceSequence:
    """One sequence's compressed cache and its forward pass."""

    QUERY_BLOCK = 256  # long chunks attend block by block, skipping keys no query of a block can see

    def __init__(self, model: LoadedModel, rule: EvictionRule, collect_logits: bool = False):
        self.model = model
        self.rule = rule
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.heads = [DecisionHead(model.dms, i, self.num_heads, self.num_kv_heads) for i in range(self.num_layers)]
        dev, dt = model.device, model.dtype
        empty = lambda: Row(  # noqa: E731
            torch.empty(0, self.head_dim, device=dev, dtype=dt),
            torch.empty(0, self.head_dim, device=dev, dtype=dt),
            torch.empty(0, dtype=torch.long, device=dev),
            torch.empty(0, dtype=torch.bool, device=dev),
        )
        self.rows = [[empty() for _ in range(self.num_kv_heads)] for _ in range(self.num_layers)]
        self.seen = 0
        self.ids: list[int] = []  # every token fed so far (the key for reusing this cache)
        self.collect_logits = collect_logits
        self.logit_log: list[torch.Tensor] = []  # per layer decision logits (for calibration)

    def fork(self) -> ReferenceSequence:
        """A copy that can go on independently (K/V tensors are never written in place; flags are)."""
        twin = ReferenceSequence.__new__(ReferenceSequence)
        twin.__dict__.update(self.__dict__)
        twin.rows = [[Row(r.k, r.v, r.pos, r.flag.clone()) for r in layer] for layer in self.rows]
        twin.ids = list(self.ids)
        twin.logit_log = []
        return twin

    # -- accounting -------------------------------------------------------------------------
    def live_entries(self) -> int:
        return sum(row.k.shape[0] for layer in self.rows for row in layer)

    def row_lengths(self) -> list[list[int]]:
        return [[row.k.shape[0] for row in layer] for layer in self.rows]

    # -- forward ----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run new tokens through the model on top of the cache. Returns logits [n, vocab] (float32)."""
        hf = self.model.hf_model
        inner = hf.model
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.model.device).view(-1)
        n = ids.shape[0]
        pos = torch.arange(self.seen, self.seen + n, device=ids.device)
        x = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(x[None], pos[None])
        cos, sin = cos[0].to(x.dtype), sin[0].to(x.dtype)
        for li, layer in enumerate(inner.layers):
            attn = layer.self_attn
            q, k, v, logits = attention_inputs(layer, self.heads[li], x, cos, sin,
                                               (self.num_heads, self.num_kv_heads, self.head_dim))
            if self.collect_logits and logits is not None:
                self.logit_log.append(logits.detach())
            decisions = self.rule.decide(logits, pos, self.num_kv_heads, layer=li)
            o = self._attend(li, q, k, v, decisions, pos, attn.scaling)
            x = x + attn.o_proj(o.reshape(n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.seen += n
        self.ids.extend(ids.tolist())
        return hf.lm_head(inner.norm(x)).float()

    def _attend(self, li: int, q, k, v, decisions, pos, scale: float) -> torch.Tensor:
        n, G = q.shape[0], self.num_heads // self.num_kv_heads
        w = self.rule.window
        out = torch.empty_like(q)
        chunk_flags = torch.zeros_like(decisions)
        chunk_flags[:-1] = decisions[1:]
        for h in range(self.num_kv_heads):
            row = self.rows[li][h]
            if row.flag.numel():  # the first new token decides the fate of the newest kept token
                row.flag[-1] = decisions[0, h]
            keys = torch.cat([row.k, k[:, h]])
            vals = torch.cat([row.v, v[:, h]])
            kpos = torch.cat([row.pos, pos])
            kflag = torch.cat([row.flag, chunk_flags[:, h]])
            kf, vf = keys.float(), vals.float()
            for a in range(0, n, self.QUERY_BLOCK):
                b = min(n, a + self.QUERY_BLOCK)
                # Keys that are flagged and already out of the window for this block's first query
                # are invisible to all of its queries: leave them out (the work then shrinks with CR).
                useful = (~kflag | (pos[a] - kpos <= w)) & (kpos <= pos[b - 1])
                idx = useful.nonzero().squeeze(1)
                dist = pos[a:b, None] - kpos[idx][None, :]
                visible = (dist >= 0) & ((dist <= w) | ~kflag[idx][None, :])  # [b - a, m']
                qh = q[a:b, h * G : (h + 1) * G].float()  # [b - a, G, D]
                scores = torch.einsum("ngd,md->gnm", qh, kf[idx]) * scale
                scores = scores.masked_fill(~visible[None], float("-inf"))
                probs = torch.softmax(scores, dim=-1)
                out[a:b, h * G : (h + 1) * G] = torch.einsum("gnm,md->ngd", probs, vf[idx]).to(q.dtype)
            # Drop what the newest token (and so every later one) can no longer see.
            keep = ~kflag | (pos[-1] - kpos <= w)
            self.rows[li][h] = Row(keys[keep], vals[keep], kpos[keep], kflag[keep])
        return out
