"""Per-(layer, KV head) threshold tables: a requested compression ratio -> a decision-logit threshold
for every (layer, KV head), fitted once from the decision logits of one dense pass over sample text.

The fit (:func:`fit_thresholds`) keeps each head's character: at the trained rule (logit > 0) head
(l, h) evicts a share e_lh of its decisions; for a ratio r every head moves by one common shift c in
log-odds, e_lh(r) = sigmoid(logit(e_lh) + c), with c chosen so that the mean kept share
mean(1 - e_lh(r)) is 1 / r; head (l, h)'s threshold is then the (1 - e_lh(r)) quantile of its own
logits. c = 0 is the trained rule, so the table passes near 0 at the trained ratio, and the
thresholds move monotonically and continuously with r (interpolated in log2(r) between grid points).

What a ratio means here: the compression of the tokens that have left the window, i.e. the ratio a
long sequence tends to. A finite sequence of T tokens keeps the last window + 1 tokens whatever the
decisions say, so its overall ratio is lower: about T / (w + 1 + (T - w - 1) / ratio). Both are
reported by :func:`measure_compression` (through the reference backend's inference path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from budgetllm.dms.decisions import DecisionHead, attention_inputs

RATIOS = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
MAX_PER_HEAD = 1 << 16  # logits kept per (layer, KV head) for a quantile: subsampled by a stride beyond this


@torch.inference_mode()
def decision_logits(loaded, seqs: list) -> torch.Tensor:
    """Decision logits [L, H, N] float32 of a dense pass (causal SDPA over the model's own weights)
    over every sequence (N = their tokens after the first, whose decisions decide a token's fate)."""
    if not loaded.dms.has_decisions:
        raise ValueError("the model has no learned decisions (variant 'none'): train or load an adapter first")
    hf = loaded.hf_model
    inner, cfg = hf.model, hf.config
    Hq, H = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    heads = [DecisionHead(loaded.dms, i, Hq, H) for i in range(cfg.num_hidden_layers)]
    out: list[list[torch.Tensor]] = [[] for _ in heads]
    for ids in seqs:
        ids = torch.as_tensor(ids, dtype=torch.long, device=loaded.device).view(-1)
        T = ids.shape[0]
        x = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(x[None], torch.arange(T, device=ids.device)[None])
        cos, sin = cos[0].to(x.dtype), sin[0].to(x.dtype)
        for li, layer in enumerate(inner.layers):
            attn = layer.self_attn
            q, k, v, logits = attention_inputs(layer, heads[li], x, cos, sin, (Hq, H, D))
            out[li].append(logits[1:].float().cpu())
            q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
            k, v = k.repeat_interleave(Hq // H, 1), v.repeat_interleave(Hq // H, 1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling)
            x = x + attn.o_proj(o[0].transpose(0, 1).reshape(T, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
    return torch.stack([torch.cat(parts).T for parts in out])


def fit_thresholds(logits: torch.Tensor, ratios=RATIOS) -> tuple[dict[float, tuple], list[dict]]:
    """logits [L, H, N] -> ({ratio: thresholds [L][H]}, one record per ratio with the kept share the fit
    predicts on these logits). Subsampled to ``MAX_PER_HEAD`` values per head (no quantile size limit)."""
    L, H, N = logits.shape
    if N < 2:
        raise ValueError("need at least 2 decision logits per head to fit thresholds")
    step = max(1, -(-N // MAX_PER_HEAD))
    srt = logits[..., ::step].double().sort(-1).values  # [L, H, n]
    n = srt.shape[-1]
    share0 = (srt > 0).double().mean(-1).clamp(0.5 / n, 1 - 0.5 / n)  # the trained rule's eviction share
    z0 = torch.logit(share0)
    table, records = {}, []
    for r in ratios:
        target = 1.0 - 1.0 / float(r)
        lo, hi = -60.0, 60.0
        for _ in range(100):  # mean eviction share rises with c
            c = 0.5 * (lo + hi)
            lo, hi = (c, hi) if torch.sigmoid(z0 + c).mean() < target else (lo, c)
        share = torch.sigmoid(z0 + 0.5 * (lo + hi))
        pos = (1 - share) * (n - 1)  # the (1 - share) quantile, linear between order statistics
        i0 = pos.floor().long().clamp(0, n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        w = pos - i0
        thr = srt.gather(-1, i0[..., None])[..., 0] * (1 - w) + srt.gather(-1, i1[..., None])[..., 0] * w
        thr = _mid_gap(srt, thr)
        kept = (srt <= thr[..., None]).double().mean()
        table[float(r)] = tuple(tuple(round(float(t), 5) for t in row) for row in thr)
        records.append({"ratio": float(r), "predicted_ratio": round(1 / max(float(kept), 1e-9), 4),
                        "mean_threshold": round(float(thr.mean()), 4)})
    return table, records


def _mid_gap(srt: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """Move each threshold to the middle of the gap between the fitted logits around it: the same
    logits are kept, and none sits on the threshold, where a last-ulp difference between two
    forwards (a backend's fused ops against this dense pass) would flip its decision."""
    n = srt.shape[-1]
    idx = torch.searchsorted(srt, thr[..., None].contiguous(), right=True)[..., 0]  # logits <= thr
    below = srt.gather(-1, (idx - 1).clamp(0, n - 1)[..., None])[..., 0]
    above = srt.gather(-1, idx.clamp(0, n - 1)[..., None])[..., 0]
    inside = (idx > 0) & (idx < n)
    return torch.where(inside, 0.5 * (below + above), thr)


def fit_threshold_table(loaded, seqs: list, ratios=RATIOS, *, progress: bool = False) -> tuple[dict, list[dict]]:
    """The table of ``loaded`` fitted on ``seqs`` (token-id lists longer than the window + 1)."""
    if not loaded.dms.has_decisions:
        raise ValueError("the model has no learned decisions (variant 'none'): train or load an adapter first")
    if any(len(s) <= loaded.dms.window + 1 for s in seqs):
        raise ValueError(f"sample sequences must be longer than the window + 1 ({loaded.dms.window + 1} tokens)")
    native = float(loaded.dms.native_cr)
    grid = tuple(sorted(set(ratios) | ({native} if native > 1 else set())))
    return fit_thresholds(decision_logits(loaded, seqs), grid)


def prompt_thresholds(loaded, prompt_ids: list[int], ratio: float) -> tuple:
    """The documented last resort for a model without a table: the same fit on this prompt alone."""
    table, _ = fit_thresholds(decision_logits(loaded, [prompt_ids]), (float(ratio),))
    return table[float(ratio)]


@torch.no_grad()
def measure_compression(loaded, seqs: list, threshold, window: int | None = None) -> dict:
    """Prefill each sequence with the DMS rule at ``threshold`` (a number or a [L][H] grid) through the
    reference backend; returns overall and out-of-window ratios."""
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.reference.sequence import ReferenceSequence

    window = loaded.dms.window if window is None else window
    rule = EvictionRule("dms", window=window, threshold=threshold)
    rows = loaded.config.num_hidden_layers * loaded.config.num_key_value_heads
    seen = live = old = old_kept = 0
    for ids in seqs:
        seq = ReferenceSequence(loaded, rule)
        seq.forward(torch.as_tensor(ids).view(-1))
        n_live = seq.live_entries()
        recent = min(seq.seen, window + 1) * rows
        seen += seq.seen * rows
        live += n_live
        old += seq.seen * rows - recent
        old_kept += n_live - recent
    return {"overall": seen / max(live, 1), "outside_window": old / max(old_kept, 1),
            "evicted_fraction_outside": 1 - old_kept / max(old, 1)}


def compression_at_lengths(loaded, stream: list[int], lengths=(1024, 4096, 8192), compression: float = 8.0) -> list[dict]:
    """Overall compression of a prefill of each length at the threshold(s) the model uses for ``compression``."""
    threshold = loaded.dms.thresholds_for(compression)
    threshold = 0.0 if threshold is None else threshold
    out = []
    for n in lengths:
        n = min(n, len(stream), loaded.max_context)
        m = measure_compression(loaded, [stream[:n]], threshold)
        out.append({"tokens": n, "requested": compression, **{k: round(v, 3) for k, v in m.items()}})
    return out


def table_to_json(table: dict) -> dict:
    """{ratio: grid} -> the JSON form stored with adapters and beside checkpoints."""
    return {f"{float(r):g}": grid if isinstance(grid, (int, float)) else [list(row) for row in grid]
            for r, grid in sorted(table.items())}
