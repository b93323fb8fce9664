"""GPU checks of the long-trace retrain's two GPU-only parts (bench/retrofit_long_traces.py): the paged engine
writing traces for the embedded model, and one training step on 2 x 8192-token rows within the H200's memory."""

from __future__ import annotations

import gc
import time

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_paged_engine_writes_long_traces_and_stops_at_the_deadline():
    from budgetllm import LLM
    from budgetllm.dms.traces import generate_traces

    # max_seqs 8 (>= the 5 concurrent traces): the default 128 captures 12 decode graphs this test never uses
    llm = LLM.from_pretrained(None, device="cuda", backend="paged", progress=False, max_seqs=8)
    max_context = llm.max_context  # read while open: close() drops the model
    try:
        traces = generate_traces(llm, 5, seed=21, max_tokens=64, min_tokens=1, concurrency=5, long_context=True)
        late = generate_traces(llm, 2, seed=21, max_tokens=8, min_tokens=1, deadline=time.time() - 1)
    finally:
        llm.close()
    assert len(traces) == 5 and late == []
    assert {t["kind"] for t in traces} == {"arithmetic", "variable_tracking", "kv_retrieval", "open", "passage_copy"}
    long = [t for t in traces if t["kind"] in ("kv_retrieval", "passage_copy")]
    assert all(2048 < t["tokens"] <= max_context for t in long)  # long task bodies, within the 8K context
    assert all(t["tokens"] == len(t["ids"]) for t in traces)


def test_one_retrain_step_at_8k_tokens_fits():
    from budgetllm.dms.train import RetrofitConfig, Retrofitter
    from budgetllm.models import load_model

    loaded = load_model(None, device="cuda", progress=False)
    rows = torch.randint(0, 49152, (2, 8192), generator=torch.Generator().manual_seed(0))
    cfg = RetrofitConfig(target_cr=8.0, window=256, steps=1, batch_size=2, seq_len=8192, lr=2e-4, initial_cr=8.0)
    torch.cuda.reset_peak_memory_stats()
    try:
        rec = Retrofitter(loaded, cfg, rows).train_step()
        peak = torch.cuda.max_memory_allocated() / 2**30
    finally:  # the step's ~100 GiB stay cached by torch's allocator unless given back (later tests size pools)
        del loaded
        gc.collect()
        torch.cuda.empty_cache()
    print(f"one step of 2 x 8192 tokens: {rec['seconds']:.2f}s, peak {peak:.1f} GiB")
    assert torch.isfinite(torch.tensor(rec["loss"])) and peak < 120
