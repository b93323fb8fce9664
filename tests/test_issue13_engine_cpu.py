"""bench/issue13.py's engine part and the long generations on a tiny model on the CPU paged engine
(Triton interpreter): runs interleaved and all kept, bytes per step from the meter, the time box
skips what would start short, and the long-generation pair counts the median run."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


class _Box:
    def __init__(self, left):
        self._left = left

    def left(self):
        return self._left


def test_engine_runs_and_long_generation_on_a_tiny_engine(tiny_dir):
    from bench.issue13 import engine_runs
    from bench.issue13_lines import bw_fraction, runs_of
    from budgetllm.benchmarks.long_generation import bench_long_generation, bytes_ratio
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.models.loading import load_model

    loaded = load_model(str(tiny_dir("llama")), device="cpu", dtype=torch.float32, progress=False)
    backend = PagedBackend(loaded, max_seqs=3, page_size=4, num_pages=1500, cuda_graphs=False, max_context=256,
                           max_prefill_tokens=256, window=8, prefix_cache=0)
    try:
        res = {"engine": [], "skipped": [], "long_generation": []}
        pts = [(24, 2, 1), (24, 2, 8)]
        engine_runs(res, _Box(100), 1e9, "t", backend, loaded, "q", pts, reps=2, new_tokens=6)
        assert [(r["rep"], r["compression"]) for r in res["engine"]] == [(0, 1), (0, 8), (1, 1), (1, 8)]
        for r in res["engine"]:
            assert r["bw_fraction"] == pytest.approx((r["weight_bytes"] + r["kv_read_per_step"]) / (r["step_ms"] / 1e3) / 1e9)
        # CR 8 over a 24-token prompt with an 8-token window keeps fewer entries: fewer KV bytes per step
        assert runs_of(res, "q", 24, 2, 8)[0]["kv_read_per_step"] < runs_of(res, "q", 24, 2, 1)[0]["kv_read_per_step"]
        assert bw_fraction(runs_of(res, "q", 24, 2, 1), 1e9) > 0
        engine_runs(res, _Box(10), 1e9, "t", backend, loaded, "q", pts[:1], reps=2)
        assert len(res["engine"]) == 4 and len(res["skipped"]) == 2  # under 15 s left: listed, not run

        bench_long_generation(_Box(100), res, "q", batches=(2,), new_tokens=20, prompt=4, repeats=2,
                              loaded=loaded, backend=backend, min_left_s=15)
        (pair,) = res["long_generation"]
        assert len(pair["runs_speedup"]) == 2 and pair["cr8"]["achieved_compression"] > 1.2
        assert pair["bytes_ratio"] == bytes_ratio(pair["cr1"]["weight_bytes"], pair["cr1"]["kv_read_per_step"],
                                                  pair["cr8"]["kv_read_per_step"]) > 1.0
        assert pair["cr1"]["step_ms"] == pytest.approx(sum(pair["cr1"]["runs_step_ms"]) / 2)
    finally:
        backend.close()
