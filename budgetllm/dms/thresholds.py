"""The threshold table: a requested compression ratio -> a decision-logit threshold, fitted on
held-out text through the real inference path (``ReferenceSequence`` with ``EvictionRule("dms")``).

What a ratio means here: the compression of the tokens that have left the window, i.e. the ratio a
long sequence tends to. A finite sequence of T tokens keeps the last window + 1 tokens whatever
the decisions say, so its overall ratio is lower: about T / (w + 1 + (T - w - 1) / ratio).
Both are reported by :func:`measure_compression`.
"""

from __future__ import annotations

import math

import torch

RATIOS = (2.0, 4.0, 8.0, 16.0)


@torch.no_grad()
def measure_compression(loaded, seqs: list, threshold: float, window: int | None = None) -> dict:
    """Prefill each sequence with the DMS rule at ``threshold``; returns overall and out-of-window ratios."""
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.reference import ReferenceSequence

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
    return {"threshold": threshold, "overall": seen / max(live, 1), "outside_window": old / max(old_kept, 1),
            "evicted_fraction_outside": 1 - old_kept / max(old, 1)}


@torch.no_grad()
def dense_logit_range(loaded, seqs: list) -> tuple[float, float, torch.Tensor]:
    """Decision logits on a dense pass (for the search bracket and a first guess)."""
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.reference import ReferenceSequence

    logs = []
    for ids in seqs:
        seq = ReferenceSequence(loaded, EvictionRule("dense"), collect_logits=True)
        seq.forward(torch.as_tensor(ids).view(-1))
        logs += [x.flatten().float().cpu() for x in seq.logit_log]
    allv = torch.cat(logs)
    return float(allv.min()), float(allv.max()), allv


def fit_threshold_table(loaded, seqs: list, ratios=RATIOS, *, iters: int = 14, tol: float = 0.02,
                        progress: bool = False) -> tuple[dict[float, float], list[dict]]:
    """For each ratio, binary-search the threshold whose out-of-window compression on ``seqs`` hits it.

    Returns ({ratio: threshold}, one measurement record per ratio). A ratio the decisions cannot
    reach (e.g. above the eviction rate at the lowest logit) gets the extreme threshold and its
    record says what was reached.
    """
    if not loaded.dms.has_decisions:
        raise ValueError("the model has no learned decisions (variant 'none'): train or load an adapter first")
    if any(len(s) <= loaded.dms.window + 1 for s in seqs):
        raise ValueError(f"held-out sequences must be longer than the window + 1 ({loaded.dms.window + 1} tokens)")
    lo0, hi0, allv = dense_logit_range(loaded, seqs)
    table, records = {}, []
    it = ratios
    if progress:
        from tqdm import tqdm

        it = tqdm(ratios, desc="threshold table", unit="ratio")
    for r in it:
        lo, hi = lo0 - 1.0, hi0 + 1.0  # compression decreases as the threshold rises
        guess = float(torch.quantile(allv[:: max(1, allv.numel() // 1_000_000)], 1 - 1 / r))
        best = None
        t = guess
        for _ in range(iters):
            m = measure_compression(loaded, seqs, t)
            if best is None or abs(math.log(m["outside_window"] / r)) < abs(math.log(best["outside_window"] / r)):
                best = m
            if abs(m["outside_window"] / r - 1) <= tol:
                break
            if m["outside_window"] > r:
                lo = t  # too much compression: raise the threshold
            else:
                hi = t
            t = 0.5 * (lo + hi)
        table[float(r)] = round(best["threshold"], 4)
        records.append({"ratio": r, **{k: round(v, 4) for k, v in best.items()}})
    return table, records


def compression_at_lengths(loaded, stream: list[int], lengths=(1024, 4096, 8192), compression: float = 8.0) -> list[dict]:
    """Overall compression of a prefill of each length at the threshold the model uses for ``compression``."""
    threshold = loaded.dms.threshold_for(compression)
    threshold = 0.0 if threshold is None else threshold
    out = []
    for n in lengths:
        n = min(n, len(stream), loaded.max_context)
        m = measure_compression(loaded, [stream[:n]], threshold)
        out.append({"tokens": n, "requested": compression, **{k: round(v, 3) for k, v in m.items()}})
    return out
