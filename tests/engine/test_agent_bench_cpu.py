"""The agent-loop benchmark's pieces run on the CPU (tiny model, paged engine in the interpreter):
the scripted loop reuses its history from turn 2 on, and a thinking burst reports what it ran."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def test_scripted_loop_and_burst(tiny_dir):
    from budgetllm.benchmarks.agent_loop import burst, loop_summary, run_loop
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.models.loading import load_model

    loaded = load_model(str(tiny_dir("qwen2")), device="cpu", dtype=torch.float32, progress=False)
    runs = {}
    for prefix in (None, 0):
        backend = PagedBackend(loaded, max_seqs=3, page_size=4, num_pages=800, cuda_graphs=False, max_context=512,
                               max_prefill_tokens=512, window=16, prefix_cache=prefix)
        # small sizes: the paged engine runs its kernels in the Triton interpreter here
        runs[prefix] = run_loop(backend, loaded, history=400, steps=3, answer_tokens=4, hf=loaded.hf_model,
                                system_tokens=128)
        if prefix is None:
            b = burst(backend, loaded, 2, 12, max_tokens=16, prompt=8)
            assert b["tokens"] == 32 and 0 < b["reasoning_tokens"] <= 24
        backend.close()
    reuse, fresh = runs[None]["turns"], runs[0]["turns"]
    assert [t["prompt_tokens"] for t in reuse] == [t["prompt_tokens"] for t in fresh]
    assert reuse[0]["cached_tokens"] == 0 and all(t["cached_tokens"] == 0 for t in fresh)
    for prev, t in zip(reuse, reuse[1:], strict=False):
        assert t["cached_tokens"] == prev["prompt_tokens"]  # the previous prompt's kept state
        assert t["prefix_pages"] > 0 and t["hf_ttft_s"] > 0
    s = loop_summary(runs[None], runs[0])
    assert 0.9 < s["history_served_min"] < 1.0


def test_full_mode_turns_add_a_few_hundred_tokens(tiny_dir):
    """The full mode's realistic agent: the first prompt is the long context, every later turn adds
    ``turn_tokens`` (answer, tool call, tool result) and prefills only those on top of the kept state;
    the rows and the summary say how many tokens each turn prefilled."""
    from budgetllm.benchmarks.agent_loop import loop_summary, run_loop
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.models.loading import load_model

    loaded = load_model(str(tiny_dir("qwen2")), device="cpu", dtype=torch.float32, progress=False)
    runs = {}
    for prefix in (None, 0):
        backend = PagedBackend(loaded, max_seqs=3, page_size=4, num_pages=800, cuda_graphs=False, max_context=512,
                               max_prefill_tokens=512, window=16, prefix_cache=prefix)
        runs[prefix] = run_loop(backend, loaded, history=240, steps=4, answer_tokens=4, turn_tokens=40)
        backend.close()
    reuse, fresh = runs[None]["turns"], runs[0]["turns"]
    assert [t["prompt_tokens"] for t in reuse] == [120, 160, 200, 240]
    assert [t["added_tokens"] for t in reuse[1:]] == [40, 40, 40]
    assert [t["prefilled_tokens"] for t in reuse] == [120, 40, 40, 40]  # the previous prompt's kept state
    assert [t["prefilled_tokens"] for t in fresh] == [t["prompt_tokens"] for t in fresh]
    s = loop_summary(runs[None], runs[0])
    assert s["prefilled_tokens_per_turn"] == [120, 40, 40, 40] and s["ttft_speedup_last3_median"] > 0


def test_the_loops_seconds_leave_hf_out():
    """HF's prefills (the baseline) are timed apart from the agent loop's own seconds: a loop run
    with a slow HF must report about the same seconds as its turns took, and HF's time separately
    (the old loop counted HF inside, so the reuse loop looked slower than the loop without reuse)."""
    import time
    from types import SimpleNamespace

    from budgetllm.benchmarks.agent_loop import loop_summary, run_loop
    from budgetllm.engine.request import StepOutput

    cfg = SimpleNamespace(vocab_size=1000, num_hidden_layers=2, num_key_value_heads=1, head_dim=8,
                          hidden_size=16, num_attention_heads=2)
    loaded = SimpleNamespace(config=cfg, dtype=torch.float32)

    class FakeBackend:  # 20 ms a call, 4 answer tokens
        window = 16

        def run(self, req):
            time.sleep(0.02)
            req.prefill_seconds, req.cached_tokens = 0.01, 0
            for t in range(4):
                yield StepOutput(100 + t, False)
            yield StepOutput(-1, False, finished="length")

        def pool_stats(self):
            return {"pages_used": 0}

    class SlowHF:  # 150 ms a prefill
        device = torch.device("cpu")

        def generate(self, ids, **kw):
            time.sleep(0.15)
            return ids

    steps = 3
    with_hf = run_loop(FakeBackend(), loaded, history=400, steps=steps, answer_tokens=4, hf=SlowHF(), system_tokens=64)
    without = run_loop(FakeBackend(), loaded, history=400, steps=steps, answer_tokens=4, system_tokens=64)
    turns = sum(t["seconds"] for t in with_hf["turns"])
    assert with_hf["hf_seconds"] >= 0.15 * steps and without["hf_seconds"] == 0
    assert turns <= with_hf["seconds"] < turns + 0.1  # HF's 0.45 s are not in the loop's seconds
    assert with_hf["seconds"] < without["seconds"] + 0.1
    s = loop_summary(with_hf, without)
    assert s["end_to_end_s"] == with_hf["seconds"] and s["hf_seconds"] == with_hf["hf_seconds"]
