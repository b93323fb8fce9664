"""Long generations (reasoning-shaped): a short prompt, thousands of generated tokens, batch 16 and
64, CR 1 against CR 8 on the same engine — the matrix part ``--only long``.

Here the cache grows during decode, so eviction and page recycling happen inside the timed steps
(a long prompt would have paid them in the prefill). The target compares the speed-up with what the
bytes allow: a step reads the weights plus the kept KV, so CR 8 can be at most
``(weights + KV at CR 1) / (weights + KV at CR 8)`` times faster (per-step KV means over the run).
"""

from __future__ import annotations

from dataclasses import asdict

LONG_PROMPT = 256
LONG_NEW_TOKENS = 4096
LONG_BATCHES = (16, 64)


def long_pair(cr1: dict, cr8: dict, weight_bytes: int) -> dict:
    """The CR 8 / CR 1 comparison of one batch size: speed-up, the ratio the bytes allow, and the
    fraction of it reached (``cr1``/``cr8``: rows with ``decode_tok_s`` and ``kv_read_per_step``)."""
    speedup = cr8["decode_tok_s"] / cr1["decode_tok_s"]
    allowed = (weight_bytes + cr1["kv_read_per_step"]) / (weight_bytes + cr8["kv_read_per_step"])
    return {"batch": cr1["batch"], "speedup": speedup, "bytes_ratio": allowed,
            "fraction_of_bytes_ratio": speedup / allowed, "cr1": cr1, "cr8": cr8}


def bench_long_generation(clock, results: dict, shape: str = "qwen2.5-1.5b", batches=LONG_BATCHES,
                          new_tokens: int = LONG_NEW_TOKENS, prompt: int = LONG_PROMPT) -> None:
    """Appends one :func:`long_pair` per batch size to ``results["long_generation"]`` (skipped ones to
    ``results["skipped"]`` when the clock runs out)."""
    from budgetllm.benchmarks.baselines import weight_bytes
    from budgetllm.benchmarks.engine_bench import run_batch
    from budgetllm.benchmarks.matrix import _collect, paged_backend
    from budgetllm.models.testing import random_model

    loaded = random_model(shape)
    wbytes = weight_bytes(loaded.hf_model)
    backend = paged_backend(loaded, max_seqs=max(batches) + 4)
    out = results.setdefault("long_generation", [])
    for batch in batches:
        rows = {}
        for cr in (1, 8):
            if clock.left() < 60:
                results["skipped"].append({"long_generation": shape, "batch": batch, "compression": cr})
                continue
            r = run_batch(backend, loaded, batch, prompt, new_tokens, cr)
            rows[cr] = asdict(r) | {"shape": shape, "backend": "paged", "weight_bytes": wbytes, "prompt": prompt,
                                    "new_tokens": new_tokens}
        if len(rows) == 2:
            out.append(long_pair(rows[1], rows[8], wbytes))
    backend.close()
    backend = None
    _collect()
