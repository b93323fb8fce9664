"""Whole calls on the CPU backend equal the reference backend's: tokens, thinking, KV accounting, reuse."""

from __future__ import annotations

import pytest

from budgetllm import LLM

VARIANTS = [("llama", None), ("llama", "borrowed"), ("qwen2", "adapter"), ("qwen3", "borrowed"), ("qwen3", "adapter")]
PROMPT = "Tell me about the sea, the ships of the old harbour and the people who sailed them."


@pytest.fixture(scope="module")
def pair(tiny_dir):
    """pair(arch, dms) -> (reference LLM, cpu LLM), each on its own copy of the checkpoint."""
    cache: dict = {}

    def make(arch, dms):
        if (arch, dms) not in cache:
            path = str(tiny_dir(arch, dms))
            cache[arch, dms] = tuple(LLM.from_pretrained(path, backend=b, device="cpu", progress=False)
                                     for b in ("reference", "cpu"))
        return cache[arch, dms]

    return make


def _same_call(a, b):
    assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason
    assert (b.text, b.reasoning) == (a.text, a.reasoning)
    ua, ub = a.usage, b.usage
    assert (ub.input_tokens, ub.output_tokens, ub.reasoning_tokens, ub.cached_tokens) == \
        (ua.input_tokens, ua.output_tokens, ua.reasoning_tokens, ua.cached_tokens)
    ka, kb = ua.kv.to_dict(), ub.kv.to_dict()
    for key in ("live_bytes", "peak_live_bytes", "logical_bytes", "evicted_tokens", "kv_bytes_read",
                "compression_achieved", "reserved_bytes", "mode"):
        assert kb[key] == ka[key], key


@pytest.mark.parametrize("arch,dms", VARIANTS)
@pytest.mark.parametrize("compression", [1, 8])
@pytest.mark.parametrize("thinking_budget", [None, 14])
def test_greedy_calls_equal_the_reference(arch, dms, compression, thinking_budget, pair):
    ref, cpu = pair(arch, dms)
    assert cpu.backend.name == "cpu" and ref.backend.name == "reference"
    opts = dict(compression=compression, max_tokens=28, thinking_budget=thinking_budget)
    a, b = ref.generate(PROMPT, **opts), cpu.generate(PROMPT, **opts)
    _same_call(a, b)
    if compression == 1:
        assert b.usage.kv.evicted_tokens == 0 and b.usage.kv.compression_achieved == 1.0
    elif dms is not None:
        assert b.usage.kv.evicted_tokens > 0  # window 8: the tiny DMS models evict during the call
    if thinking_budget:
        assert 0 < b.usage.reasoning_tokens <= thinking_budget


def test_calibrated_ratio_and_sampling_equal_the_reference(pair):
    """CR 4 has no table on the tiny model: the threshold comes from a dense pass over the prompt."""
    ref, cpu = pair("qwen3", "borrowed")
    opts = dict(compression=4, max_tokens=20, temperature=0.8, seed=11)
    _same_call(ref.generate(PROMPT * 2, **opts), cpu.generate(PROMPT * 2, **opts))


def test_a_resumed_turn_reuses_the_compressed_cache(pair):
    ref, cpu = pair("qwen2", "adapter")
    turns = []
    for llm in (ref, cpu):
        messages = [{"role": "user", "content": PROMPT}]
        first = llm.generate(messages, compression=8, max_tokens=16)
        messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
        turns.append((first, llm.generate(messages, compression=8, max_tokens=16)))
    (a1, a2), (b1, b2) = turns
    _same_call(a1, b1)
    _same_call(a2, b2)
    assert b2.usage.cached_tokens > 0


def test_cancelling_a_stream_leaves_the_backend_usable(pair):
    _, cpu = pair("llama", "borrowed")
    stream = cpu.stream(PROMPT, compression=8, max_tokens=40)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert cpu.pool_stats()["active"] == 0
    assert cpu.generate(PROMPT, compression=8, max_tokens=6).usage.output_tokens > 0


def test_cpu_is_the_default_backend_on_the_cpu(tiny_dir):
    llm = LLM.from_pretrained(str(tiny_dir("llama")), device="cpu", progress=False)
    assert llm.backend.name == "cpu"
    ref = LLM.from_pretrained(str(tiny_dir("llama")), device="cpu", progress=False, backend="reference")
    assert ref.backend.name == "reference"  # the oracle stays selectable


def test_the_cpu_benchmark_helpers_on_a_tiny_model(tiny_dir):
    """bench/cpu_decode.py's measurements run (tiny model, a few tokens) and agree on the tokens."""
    import importlib.util
    from pathlib import Path

    from budgetllm.engine.cpu import CPUBackend
    from budgetllm.engine.reference.backend import ReferenceBackend
    from budgetllm.models import load_model

    path = Path(__file__).resolve().parents[3] / "bench" / "cpu_decode.py"
    spec = importlib.util.spec_from_file_location("cpu_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ref_model = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", progress=False)
    cpu_model = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", progress=False)
    prompt = list(range(400, 430))
    hf = bench.run_hf(ref_model.hf_model, prompt, 6)
    ref = bench.run_backend(ReferenceBackend(ref_model), ref_model, prompt, 1, 6)
    cpu = bench.run_backend(CPUBackend(cpu_model), cpu_model, prompt, 8, 6)
    assert len(hf["tokens"]) == len(ref["tokens"]) == 6 and hf["tokens"] == ref["tokens"]
    assert cpu["rule"] == "dms" and len(cpu["tokens"]) == 6
    assert all(r["tok_s"] > 0 and r["cpu_ms_per_token"] > 0 for r in (hf, ref, cpu))
    assert bench._common([1, 2, 3], [1, 2, 4]) == 2 and bench._common([1, 2], [1, 2, 3]) == 2
