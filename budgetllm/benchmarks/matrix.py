"""The benchmark matrix of docs/targets.md on one GPU: every point measured side by side in one run."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from budgetllm.benchmarks.baselines import (
    GraphedDenseStep,
    hf_generate_decode_rate,
    measured_bandwidth,
    weight_bytes,
)
from budgetllm.benchmarks.engine_bench import BENCH_WINDOW, kv_shape_of, run_batch

# "max concurrency at a fixed pool size": how many sequences of a point's measured size (pages held
# per sequence, from the pool) fit in this many bytes of KV pool.
FIXED_POOL_BYTES = 16 << 30
MAX_PREFILL = 16384  # tokens per prefill step


def tokens_to_decode(base: int, batch: int, context: int) -> int:
    """Prefill chunks alternate with decode steps, so the first requests decode while the last ones
    prefill: give each one token per chunk to spare, so that the whole batch decodes together for
    about ``base`` steps (the timed ones)."""
    return base + -(-batch * context // MAX_PREFILL)


class Clock:
    """A wall-time budget for the whole run: points past it are skipped and say so."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()


def paged_backend(loaded, max_seqs: int, num_pages: int | None = None, prefix_cache: int = 0,
                  window: int = BENCH_WINDOW, memory_fraction: float = 0.5):
    from budgetllm.engine.paged.backend import PagedBackend

    # Half of the free memory is plenty for most points and leaves room for the baselines.
    return PagedBackend(loaded, max_seqs=max_seqs, num_pages=num_pages, max_context=34 * 1024,
                        max_prefill_tokens=MAX_PREFILL, memory_fraction=memory_fraction, prefix_cache=prefix_cache,
                        window=window)


def _collect() -> None:
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def bench_shape(shape: str, contexts, batches, compressions, clock: Clock, results: dict, new_tokens: int = 48,
                baselines: bool = True, memory_fraction: float = 0.5) -> None:
    from tqdm import tqdm

    from budgetllm.models.testing import random_model

    loaded = random_model(shape)
    wbytes = weight_bytes(loaded.hf_model)
    points = [(c, b, cr) for c in contexts for b in batches for cr in compressions]
    # the points docs/targets.md names first, so a short budget skips the others
    key = {(32768, 16): 0, (8192, 16): 1, (1024, 1): 2, (32768, 1): 3, (1024, 16): 4}
    points.sort(key=lambda p: key.get(p[:2], 9))
    backend = paged_backend(loaded, max_seqs=max(batches) + 4, memory_fraction=memory_fraction)
    kvs = kv_shape_of(loaded)
    token_bytes = kvs.rows_per_token * kvs.entry_bytes  # dense
    for ctx, batch, cr in tqdm(points, desc=f"paged {shape}"):
        if clock.left() < 30:
            results["skipped"].append({"shape": shape, "context": ctx, "batch": batch, "compression": cr})
            continue
        if batch * (ctx + new_tokens) * token_bytes > 0.95 * backend.pool_stats()["total_bytes"]:
            results["skipped"].append({"shape": shape, "context": ctx, "batch": batch, "compression": cr,
                                       "why": "does not fit the pool"})
            continue
        r = run_batch(backend, loaded, batch, ctx, tokens_to_decode(new_tokens, batch, ctx), cr)
        row = asdict(r) | {"shape": shape, "backend": "paged", "weight_bytes": wbytes}
        per_seq = r.peak_reserved_bytes / batch
        row["max_concurrency_16gib"] = int(FIXED_POOL_BYTES // per_seq) if per_seq else None
        row["bytes_per_step"] = wbytes + r.kv_read_per_step
        row["achieved_bw"] = row["bytes_per_step"] / (r.step_ms / 1000)
        results["paged"].append(row)
    backend.close()
    backend = None  # the pool goes back before the baselines allocate their caches
    _collect()
    if baselines:
        for ctx in contexts:
            for batch in batches:
                if clock.left() < 30:
                    break
                step = GraphedDenseStep(loaded.hf_model, batch, ctx)
                ms = step.time_step_ms()
                results["graphed_dense"].append({"shape": shape, "context": ctx, "batch": batch, "step_ms": ms,
                                                 "tok_s": batch / (ms / 1000)})
                del step
                torch.cuda.empty_cache()
    return loaded


def bench_resumed_turn(loaded, shape: str, context: int, clock: Clock, results: dict) -> None:
    """TTFT of an agent's second turn (turn 1 + its answer + 256 new tokens): the engine keeps the
    compressed cache of turn 1 parked and prefills only the new tokens, against a prefill from scratch."""
    from budgetllm.benchmarks.engine_bench import resumed_turn_ttft

    if clock.left() < 60:
        results["skipped"].append({"resumed_turn": shape})
        return
    backend = paged_backend(loaded, max_seqs=4, prefix_cache=2)
    out = {"shape": shape, "context": context, **resumed_turn_ttft(backend, loaded, context)}
    backend.close()
    backend = None
    _collect()
    results["resumed_turn"] = out


def bench_hf(loaded, shape: str, points, clock: Clock, results: dict, static: bool = False) -> None:
    for ctx, batch in points:
        if clock.left() < 60:
            results["skipped"].append({"shape": shape, "hf": True, "context": ctx, "batch": batch, "static": static})
            continue
        r = hf_generate_decode_rate(loaded.hf_model, batch, ctx, new_tokens=16, static=static)
        results["hf_static" if static else "hf_generate"].append({"shape": shape, "context": ctx, "batch": batch, **r})


def hf_static_pairs(loaded, shape: str, clock: Clock, points=((1024, 1), (8192, 16))) -> list[dict]:
    """HF generate with its static cache and compiled decode step, next to the paged engine at CR 8
    on the same points in the same run (the compile happens in untimed warm-up calls)."""
    pairs = []
    for ctx, batch in points:
        if clock.left() < 90:
            break
        backend = paged_backend(loaded, max_seqs=batch + 2)
        paged = run_batch(backend, loaded, batch, ctx, tokens_to_decode(48, batch, ctx), 8)
        backend.close()
        backend = None
        _collect()
        static = hf_generate_decode_rate(loaded.hf_model, batch, ctx, new_tokens=16, static=True)
        pairs.append({"shape": shape, "context": ctx, "batch": batch, "paged_cr8_tok_s": paged.decode_tok_s,
                      "hf_static_tok_s": static["tok_s"], "hf_static_step_ms": static["step_ms"],
                      "ratio": paged.decode_tok_s / static["tok_s"]})
        _collect()
    return pairs


def bench_equal_memory(shape: str, context: int, dense_batch: int, clock: Clock, results: dict) -> None:
    """A KV pool just big enough for ``dense_batch`` dense sequences; CR 8 fills it with more."""
    from budgetllm.engine.paged.sequence import pages_for
    from budgetllm.models.testing import random_model

    if clock.left() < 90:
        results["skipped"].append({"equal_memory": shape})
        return
    loaded = random_model(shape)
    shape_kv = kv_shape_of(loaded)
    rows = shape_kv.rows_per_token
    pages = dense_batch * rows * (pages_for(context + 64, 16) + 1)
    out = {"shape": shape, "context": context, "pool_pages": pages, "dense_batch": dense_batch}
    # CR 8: as many sequences as the same pool holds (the window keeps (T - w) / 8 + w per row)
    per_row = pages_for((context + 64 - BENCH_WINDOW) // 8 + BENCH_WINDOW, 16) + 1
    cr8_batch = (pages - rows) // (rows * (per_row + 1))  # one page per row of decode margin each
    for cr, batch in ((1, dense_batch), (8, cr8_batch)):
        backend = paged_backend(loaded, max_seqs=batch + 2, num_pages=pages)
        r = run_batch(backend, loaded, batch, context, tokens_to_decode(32, batch, context), cr)
        out[f"cr{cr}"] = asdict(r)
        backend.close()
        backend = None
        _collect()
    results["equal_memory"].append(out)


def bench_smollm2(clock: Clock, results: dict) -> None:
    """The embedded SmolLM2-135M with its real weights and trained DMS adapter: real decisions (the
    native rule, logit > 0) on real text, against CR 1 on the same engine."""
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.models import load_model

    if clock.left() < 60:
        results["skipped"].append({"smollm2": "no time"})
        return
    try:
        loaded = load_model(None, device="cuda", dtype=torch.bfloat16, progress=False)
    except Exception as e:  # noqa: BLE001 - the embedded package is an optional install on the GPU box
        results["skipped"].append({"smollm2": repr(e)})
        return
    from budgetllm.dms.data import make_tasks, task_text_ids

    text = [t for ids in task_text_ids(loaded.tokenizer, make_tasks(64, seed=3)) for t in ids]
    backend = paged_backend(loaded, max_seqs=36, window=loaded.dms.window)
    for ctx in (1024, 4096):
        prompts = [text[i * 97 % max(1, len(text) - ctx):][:ctx] for i in range(32)]
        for batch in (1, 32):
            for cr in (1, 8):
                if clock.left() < 30:
                    continue
                rule = EvictionRule("dms", window=loaded.dms.window, threshold=0.0) if cr == 8 else \
                    EvictionRule("dense", window=loaded.dms.window)
                r = run_batch(backend, loaded, batch, ctx, tokens_to_decode(48, batch, ctx), cr, rule=rule,
                              prompts=prompts)
                results["paged"].append(asdict(r) | {"shape": "smollm2-135m (real weights, trained DMS)",
                                                     "backend": "paged", "weight_bytes": weight_bytes(loaded.hf_model)})
    backend.close()
    backend = None
    _collect()


def main(out_dir: str, budget_s: float = 480, quick: bool = False, only: str | None = None) -> dict:
    clock = Clock(budget_s)
    card = torch.cuda.get_device_name(0)
    results = {"card": card, "paged": [], "graphed_dense": [], "hf_generate": [], "hf_static": [], "equal_memory": [],
               "skipped": [], "bandwidth": measured_bandwidth(), "window": BENCH_WINDOW}
    if only in (None, "grid"):  # the Qwen2.5-1.5B grid and what is compared with it point by point
        ctxs = [1024, 8192, 32768] if quick else [1024, 4096, 8192, 16384, 32768]
        batches = [1, 16] if quick else [1, 8, 16, 32]
        loaded = bench_shape("qwen2.5-1.5b", ctxs, batches, [1, 8], clock, results, memory_fraction=0.6)
        bench_shape("qwen2.5-1.5b", [8192, 32768], [16], [2, 4], clock, results, baselines=False)
        bench_hf(loaded, "qwen2.5-1.5b", [(1024, 1), (8192, 16)], clock, results)
        bench_resumed_turn(loaded, "qwen2.5-1.5b", 8192, clock, results)
        del loaded
        _collect()
    if only == "equal":
        bench_equal_memory("qwen2.5-1.5b", 8192, 8, clock, results)
    if only == "long":  # short prompt, thousands of generated tokens (eviction during decode)
        from budgetllm.benchmarks.long_generation import bench_long_generation

        bench_long_generation(clock, results)
    if only in (None, "rest"):  # HF's compiled static cache, equal memory, other shapes, real weights
        from budgetllm.models.testing import random_model

        loaded = random_model("qwen2.5-1.5b")
        results["hf_static_pairs"] = hf_static_pairs(loaded, "qwen2.5-1.5b", clock)
        del loaded
        _collect()
        bench_equal_memory("qwen2.5-1.5b", 8192, 8, clock, results)
        for shape, ctxs in (("llama-3.2-1b", [8192, 32768]), ("qwen3-8b", [8192, 16384]), ("qwen2.5-7b", [8192, 16384])):
            if clock.left() > 120:
                bench_shape(shape, ctxs, [8], [1, 8], clock, results, baselines=False)
        bench_smollm2(clock, results)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    name = "bench.json" if only is None else f"bench-{only}.json"
    (Path(out_dir) / name).write_text(json.dumps(results, indent=1))
    return results
