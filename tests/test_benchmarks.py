"""The benchmark driver on the reference backend (CPU) and the summary arithmetic."""

from __future__ import annotations

from budgetllm.benchmarks.engine_bench import run_batch
from budgetllm.benchmarks.report import summarize
from budgetllm.engine.reference.backend import ReferenceBackend
from budgetllm.models import load_model


def test_forced_pattern_reaches_the_ratio_and_driver_counts(tiny_dir):
    loaded = load_model(str(tiny_dir("llama")), device="cpu", progress=False)
    backend = ReferenceBackend(loaded)
    dense = run_batch(backend, loaded, batch=2, context=400, new_tokens=4, compression=1)
    cr4 = run_batch(backend, loaded, batch=2, context=400, new_tokens=4, compression=4, window=16)
    assert dense.achieved_compression == 1.0
    # every head keeps 1 token in 4 beyond the 17 visible ones: 404 / (387 / 4 + 17) ~ 3.5
    assert 3.3 < cr4.achieved_compression < 3.7
    assert dense.decode_tok_s > 0 and dense.kv_read_per_step > 0


def test_summary_computes_each_target():
    def row(ctx, batch, cr, tok_s, pages, ttft=1.0):
        return {"shape": "qwen2.5-1.5b", "context": ctx, "batch": batch, "compression": cr, "decode_tok_s": tok_s,
                "peak_pages": pages, "achieved_bw": 2.4e12 if batch == 16 else 1.0e12, "ttft_s": ttft}

    results = {
        "card": "test", "bandwidth": 3.0e12,
        "paged": [row(32768, 16, 1, 100, 8000), row(32768, 16, 8, 400, 1000), row(8192, 16, 1, 500, 2000),
                  row(8192, 16, 8, 600, 300), row(32768, 1, 1, 50, 500, ttft=2.0), row(32768, 1, 8, 60, 70, ttft=2.2)],
        "graphed_dense": [{"shape": "qwen2.5-1.5b", "context": 8192, "batch": 16, "tok_s": 520}],
        "hf_generate": [{"shape": "qwen2.5-1.5b", "context": 8192, "batch": 16, "tok_s": 20}],
        "hf_static": [], "equal_memory": [], "skipped": [],
    }
    s = {t["name"].split(":")[0] + t["goal"]: t for t in summarize(results)["targets"]}
    assert s["memory>= 7.5x"]["measured"] == 8.0 and s["memory>= 7.5x"]["met"]
    assert s["memory>= 6.5x"]["measured"] == round(2000 / 300, 3)
    assert s["equal batch>= 3x"]["measured"] == 4.0
    assert s["never slower>= 1.0x"]["measured"] == 1.2
    assert s["paging costs nothing>= 0.9x"]["measured"] == round(500 / 520, 3)
    assert s["against users' default>= 20x"]["measured"] == 30.0
    assert s["prefill<= 1.2x"]["measured"] == 1.1 and s["prefill<= 1.2x"]["met"]
    assert not s["resumed turns>= 5x"]["met"] and not s["equal memory>= 5x"]["met"]


def test_resumed_turn_measurement_reuses_the_parked_cache(tiny_dir):
    """The benchmarks' resumed-turn TTFT on the paged backend (kernels in the CPU interpreter)."""
    from budgetllm.benchmarks.engine_bench import resumed_turn_ttft
    from budgetllm.engine.paged.backend import PagedBackend

    loaded = load_model(str(tiny_dir("llama")), device="cpu", progress=False)
    backend = PagedBackend(loaded, max_seqs=3, page_size=4, num_pages=600, cuda_graphs=False, max_context=400,
                           max_prefill_tokens=64, window=16, prefix_cache=2)
    try:
        r = resumed_turn_ttft(backend, loaded, 60, repeats=1)
        assert r["resumed_ttft_s"] > 0 and r["full_ttft_s"] > 0, r
        assert backend.pool_stats()["prefix_hits"] >= 1  # the second turn continued the parked rows
    finally:
        backend.close()


def test_parts_merge_into_one_report_and_refuse_other_cards():
    from budgetllm.benchmarks.report import merge_parts

    grid = {"card": "H100", "bandwidth": 3e12, "paged": [{"a": 1}], "equal_memory": [{"old": True}]}
    rest = {"card": "H100", "bandwidth": 2e12, "paged": [{"b": 2}], "equal_memory": [{"new": True}], "window": 256}
    merged = merge_parts([grid, rest])
    assert merged["paged"] == [{"a": 1}, {"b": 2}] and merged["bandwidth"] == 3e12 and merged["window"] == 256
    assert merged["equal_memory"][-1] == {"new": True}  # the report reads the latest measurement
    import pytest

    with pytest.raises(ValueError, match="different cards"):
        merge_parts([grid, {**rest, "card": "H200"}])


def test_decode_rate_counts_only_consecutive_full_batch_steps():
    """The engine-clock decode rate: start-to-start of consecutive decode steps over the whole batch."""
    from budgetllm.benchmarks.engine_bench import _full_batch_intervals

    # (batch, start, to readback, total, launch, engine step number)
    log = [(4, 0.0, 0, 0, 0, 1), (4, 1.0, 0, 0, 0, 2),  # warm-up steps (skipped)
           (4, 2.0, 0, 0, 0, 3), (4, 2.5, 0, 0, 0, 4),  # consecutive: 0.5
           (4, 4.0, 0, 0, 0, 6),                        # a prefill step (5) in between: not counted
           (4, 4.25, 0, 0, 0, 7), (3, 4.5, 0, 0, 0, 8), (4, 5.0, 0, 0, 0, 9)]  # batch 3: not full
    assert _full_batch_intervals(log, 4, since=0.0) == [0.5, 0.25]
    assert _full_batch_intervals(log, 4, since=1.5) == [0.25]  # steps 3, 4 are now the warm-ups


def test_long_generation_pair_evicts_during_decode(tiny_dir):
    """A short prompt and a long generation: the cache is compressed by tokens generated in the timed
    decode itself, and the pair's arithmetic (speed-up over the ratio the bytes allow) follows."""
    from dataclasses import asdict

    from budgetllm.benchmarks.baselines import weight_bytes
    from budgetllm.benchmarks.long_generation import long_pair

    loaded = load_model(str(tiny_dir("llama")), device="cpu", progress=False)
    backend = ReferenceBackend(loaded)
    rows = {cr: asdict(run_batch(backend, loaded, batch=2, context=8, new_tokens=60, compression=cr, window=8))
            for cr in (1, 4)}
    assert rows[4]["achieved_compression"] > 1.5 and rows[1]["achieved_compression"] == 1.0
    w = weight_bytes(loaded.hf_model)
    pair = long_pair(rows[1], rows[4], w)
    assert pair["bytes_ratio"] == (w + rows[1]["kv_read_per_step"]) / (w + rows[4]["kv_read_per_step"]) > 1.0
    assert pair["speedup"] == rows[4]["decode_tok_s"] / rows[1]["decode_tok_s"]
    assert pair["fraction_of_bytes_ratio"] == pair["speedup"] / pair["bytes_ratio"]
