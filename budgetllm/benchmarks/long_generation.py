"""Long generations (reasoning-shaped): a short prompt, thousands of generated tokens, batch 16 and
64, CR 1 against CR 8 on the same engine — the matrix part ``--only long`` and ``bench/issue13.py``.

Here the cache grows during decode, so eviction and page recycling happen inside the timed steps
(a long prompt would have paid them in the prefill). The target compares the speed-up with what the
bytes allow (:func:`bytes_ratio`, the one definition): a step reads the weights plus the kept KV, so
CR 8 can be at most ``(weights + KV at CR 1) / (weights + KV at CR 8)`` times faster (per-step KV
means over the run).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict

LONG_PROMPT = 256
LONG_NEW_TOKENS = 4096
LONG_BATCHES = (16, 64)


def bytes_ratio(weight_bytes: float, kv_cr1: float, kv_cr8: float) -> float:
    """"The ratio the bytes allow": how much faster the CR 8 step can be than the CR 1 step if both
    are bound by the bytes they read per step (weights + KV, ``kv_*`` = KV bytes read per step)."""
    return (weight_bytes + kv_cr1) / (weight_bytes + kv_cr8)


def median_row(runs: list[dict]) -> dict:
    """The counting rule for repeated runs of one point: the median of the runs' step times (decode
    tok/s from it; KV bytes per step averaged: it does not depend on timing). The first run's other
    fields are kept; ``runs`` lists every run's step ms."""
    ms = statistics.median(r["step_ms"] for r in runs)
    return dict(runs[0], step_ms=ms, decode_tok_s=runs[0]["batch"] * 1000.0 / ms,
                kv_read_per_step=statistics.fmean(r["kv_read_per_step"] for r in runs),
                runs_step_ms=[r["step_ms"] for r in runs])


def long_pair(cr1: dict, cr8: dict, weight_bytes: int) -> dict:
    """The CR 8 / CR 1 comparison of one batch size: speed-up, the ratio the bytes allow, and the
    fraction of it reached (``cr1``/``cr8``: rows with ``decode_tok_s`` and ``kv_read_per_step``)."""
    speedup = cr8["decode_tok_s"] / cr1["decode_tok_s"]
    allowed = bytes_ratio(weight_bytes, cr1["kv_read_per_step"], cr8["kv_read_per_step"])
    return {"batch": cr1["batch"], "speedup": speedup, "bytes_ratio": allowed,
            "fraction_of_bytes_ratio": speedup / allowed, "cr1": cr1, "cr8": cr8}


def long_pair_of_runs(runs1: list[dict], runs8: list[dict], weight_bytes: int) -> dict:
    """:func:`long_pair` of the median runs (:func:`median_row`), with every run's own speed-up."""
    pair = long_pair(median_row(runs1), median_row(runs8), weight_bytes)
    pair["runs_speedup"] = [a["step_ms"] / b["step_ms"] for a, b in zip(runs1, runs8, strict=False)]
    pair["counting"] = "median of the runs' step times per CR (interleaved CR 1, CR 8, CR 1, CR 8, ...)"
    return pair


def bench_long_generation(clock, results: dict, shape: str = "qwen2.5-1.5b", batches=LONG_BATCHES,
                          new_tokens: int = LONG_NEW_TOKENS, prompt: int = LONG_PROMPT, repeats: int = 1,
                          loaded=None, backend=None, min_left_s: float = 60) -> None:
    """Appends one :func:`long_pair_of_runs` per batch size to ``results["long_generation"]`` (skipped
    runs to ``results["skipped"]`` when the clock runs out). ``repeats`` runs per CR, interleaved;
    ``loaded``/``backend``: reuse a model and engine (else built here and closed at the end)."""
    from budgetllm.benchmarks.baselines import weight_bytes
    from budgetllm.benchmarks.engine_bench import run_batch
    from budgetllm.benchmarks.matrix import _collect, paged_backend
    from budgetllm.models.testing import random_model

    loaded = loaded if loaded is not None else random_model(shape)
    wbytes = weight_bytes(loaded.hf_model)
    own = backend is None
    backend = paged_backend(loaded, max_seqs=max(batches) + 4) if own else backend
    out = results.setdefault("long_generation", [])
    for batch in batches:
        rows: dict[int, list] = {1: [], 8: []}
        for rep in range(repeats):
            for cr in (1, 8):
                if clock.left() < min_left_s:
                    results["skipped"].append({"long_generation": shape, "batch": batch, "compression": cr,
                                               "rep": rep, "why": f"under {min_left_s:.0f} s left"})
                    continue
                r = run_batch(backend, loaded, batch, prompt, new_tokens, cr, window=getattr(backend, "window", 256))
                rows[cr].append(asdict(r) | {"shape": shape, "backend": "paged", "weight_bytes": wbytes,
                                             "prompt": prompt, "new_tokens": new_tokens, "rep": rep})
        if rows[1] and rows[8]:
            out.append(long_pair_of_runs(rows[1], rows[8], wbytes))
    if own:
        backend.close()
        backend = None
        _collect()
