"""The benchmark matrix of TARGETS.md on one GPU: every point measured side by side in one run."""

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
from budgetllm.benchmarks.engine_bench import kv_shape_of, run_batch


class Clock:
    """A wall-time budget for the whole run: points past it are skipped and say so."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()


def paged_backend(loaded, max_seqs: int, num_pages: int | None = None, prefix_cache: int = 0):
    from budgetllm.engine.paged_backend import PagedBackend

    # Half of the free memory is plenty for the matrix and leaves room for the baselines.
    return PagedBackend(loaded, max_seqs=max_seqs, num_pages=num_pages, max_context=34 * 1024,
                        max_prefill_tokens=16384, memory_fraction=0.5, prefix_cache=prefix_cache)


def _collect() -> None:
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def bench_shape(shape: str, contexts, batches, compressions, clock: Clock, results: dict, new_tokens: int = 48,
                baselines: bool = True) -> None:
    from tqdm import tqdm

    from budgetllm.models.testing import random_model

    loaded = random_model(shape)
    wbytes = weight_bytes(loaded.hf_model)
    points = [(c, b, cr) for c in contexts for b in batches for cr in compressions]
    backend = paged_backend(loaded, max_seqs=max(batches) + 4)
    for ctx, batch, cr in tqdm(points, desc=f"paged {shape}"):
        if clock.left() < 30:
            results["skipped"].append({"shape": shape, "context": ctx, "batch": batch, "compression": cr})
            continue
        r = run_batch(backend, loaded, batch, ctx, new_tokens, cr)
        row = asdict(r) | {"shape": shape, "backend": "paged", "weight_bytes": wbytes}
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


def bench_equal_memory(shape: str, context: int, dense_batch: int, clock: Clock, results: dict) -> None:
    """A KV pool just big enough for ``dense_batch`` dense sequences; CR 8 fills it with more."""
    from budgetllm.engine.request import pages_for
    from budgetllm.models.testing import random_model

    if clock.left() < 90:
        results["skipped"].append({"equal_memory": shape})
        return
    loaded = random_model(shape)
    shape_kv = kv_shape_of(loaded)
    rows = shape_kv.rows_per_token
    pages = dense_batch * rows * (pages_for(context + 64, 16) + 1)
    out = {"shape": shape, "context": context, "pool_pages": pages, "dense_batch": dense_batch}
    for cr, batch in ((1, dense_batch), (8, dense_batch * 6)):
        backend = paged_backend(loaded, max_seqs=batch + 2, num_pages=pages)
        r = run_batch(backend, loaded, batch, context, 32, cr)
        out[f"cr{cr}"] = asdict(r)
        backend.close()
        backend = None
        _collect()
    results["equal_memory"].append(out)


def main(out_dir: str, budget_s: float = 480, quick: bool = False) -> dict:
    clock = Clock(budget_s)
    card = torch.cuda.get_device_name(0)
    results = {"card": card, "paged": [], "graphed_dense": [], "hf_generate": [], "hf_static": [], "equal_memory": [],
               "skipped": [], "bandwidth": measured_bandwidth()}
    ctxs = [1024, 8192] if quick else [1024, 8192, 32768]
    loaded = bench_shape("qwen2.5-1.5b", ctxs, [1, 16], [1, 8], clock, results)
    bench_shape("qwen2.5-1.5b", [8192], [16], [2, 4], clock, results, baselines=False)
    bench_hf(loaded, "qwen2.5-1.5b", [(1024, 1), (8192, 16)], clock, results)
    bench_resumed_turn(loaded, "qwen2.5-1.5b", 8192, clock, results)
    del loaded
    torch.cuda.empty_cache()
    bench_equal_memory("qwen2.5-1.5b", 8192, 8, clock, results)
    for shape in ("llama-3.2-1b", "qwen3-8b", "qwen2.5-7b"):
        if clock.left() > 120:
            bench_shape(shape, [8192], [8], [1, 8], clock, results, baselines=False)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "bench.json").write_text(json.dumps(results, indent=1))
    return results
