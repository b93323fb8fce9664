"""The constrained-decoding benchmark's measurement on the CPU (paged engine, Triton interpreter,
tiny model): every run's numbers come back and the headline ratio compares like with like."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402
from budgetllm.benchmarks.constrained import headline, measure  # noqa: E402

pytest.importorskip("xgrammar")


def test_measure_reports_every_run_and_equal_work(tiny_dir):
    from budgetllm.engine.paged.backend import PagedBackend

    ref = LLM.from_pretrained(str(tiny_dir("llama", None)), backend="reference", device="cpu", progress=False,
                              dtype=torch.float32)
    llm = LLM(ref.loaded, PagedBackend(ref.loaded, max_seqs=4, page_size=4, num_pages=400, max_context=256,
                                       max_prefill_tokens=64, prefix_cache=0, cuda_graphs=False))
    try:
        result = measure(llm, [2], 6)
    finally:
        llm.close()
    (point,) = result["points"]
    for name in ("unconstrained", "constrained", "unconstrained_matched"):
        assert point[f"tokens_{name}"] > 0 and point[f"wall_s_{name}"] > 0 and point[f"steps_{name}"]
    # equal work: the matched run is capped at the constrained run's per-request counts
    assert point["tokens_unconstrained_matched"] <= point["tokens_constrained"]
    assert point["ratio"] is not None and point["ratio_basis"]
    assert point["steps_constrained"]["mask_ms_per_step"] > 0  # the constrained rows were masked
    assert point["steps_unconstrained"]["mask_ms_per_step"] == 0
    assert point["steps_constrained"]["advance_ms_per_step"] > 0  # the per-row host logic is timed too
    assert result["compile_10_tools_cached_ms"] < result["compile_10_tools_cold_ms"]


def test_headline_uses_full_batch_steps_and_falls_back():
    point = {"tok_s_constrained": 90.0, "tok_s_unconstrained": 100.0, "tok_s_unconstrained_matched": 95.0,
             "full_batch_constrained": {"steps": 20, "decode_tok_s": 570.0},
             "full_batch_unconstrained": {"steps": 30, "decode_tok_s": 600.0},
             "full_batch_unconstrained_matched": {"steps": 10, "decode_tok_s": 650.0},
             "steps_constrained": {"decode_tok_s": 400.0}, "steps_unconstrained": {"decode_tok_s": 500.0}}
    out = headline(point, 64)
    assert out["ratio"] == pytest.approx(0.95) and out["ratio_basis"] == "full-batch decode steps"
    assert out["ratio_end_to_end_equal_work"] == pytest.approx(90 / 95)
    point["full_batch_constrained"] = {"steps": 3, "decode_tok_s": 570.0}
    out = headline(point, 64)
    assert out["ratio"] == pytest.approx(0.8) and out["ratio_basis"].startswith("all decode steps")
