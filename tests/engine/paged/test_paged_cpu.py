"""The paged backend end to end on the CPU, its Triton kernels in the interpreter (tiny model, < 60 s).

Same greedy tokens and the same accounting as the reference backend at compression 1 and 8, with
the prompt prefilled in chunks on top of the compressed rows, and several concurrent requests in a
pool so small that the engine must queue and preempt; every page comes back.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

import threading  # noqa: E402

import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402
from tests.engine.enginelib import assert_next_turn_matches, request, run_concurrently  # noqa: E402


@pytest.fixture(scope="module")
def pair(tiny_dir):
    from budgetllm.engine.paged.backend import PagedBackend

    ref = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed")), backend="reference", device="cpu",
                              progress=False)
    backend = PagedBackend(ref.loaded, max_seqs=3, page_size=4, num_pages=200, cuda_graphs=False,
                           max_context=256, max_prefill_tokens=16)
    yield ref, LLM(ref.loaded, backend)
    backend.close()


@pytest.mark.parametrize("compression,thinking", [(1, None), (8, 6)])
def test_paged_equals_reference(pair, compression, thinking):
    ref, paged = pair
    a = ref.generate("Tell me about the sea.", compression=compression, max_tokens=12, thinking_budget=thinking)
    b = paged.generate("Tell me about the sea.", compression=compression, max_tokens=12, thinking_budget=thinking)
    assert b.token_ids == a.token_ids
    assert (b.usage.reasoning_tokens, b.finish_reason) == (a.usage.reasoning_tokens, a.finish_reason)
    ka, kb = a.usage.kv, b.usage.kv
    assert (kb.logical_bytes, kb.live_bytes, kb.evicted_tokens, kb.kv_bytes_read) == \
        (ka.logical_bytes, ka.live_bytes, ka.evicted_tokens, ka.kv_bytes_read)
    page = paged.backend.page_bytes
    assert kb.reserved_bytes % page == 0 and kb.reserved_bytes >= kb.live_bytes
    if compression == 8:
        assert ka.evicted_tokens > 0
    stats = paged.pool_stats()
    assert stats["active"] == 0 and stats["parked"] >= 1  # the prompt-end and end states are kept
    assert stats["pages_used"] == stats["prefix_pages"] and paged.backend.device_free_pages_now() >= stats["pages_free"]


def test_per_head_thresholds_equal_reference(pair):
    """A per-(layer, KV head) threshold table (a ratio between its points): the same tokens and the
    same evictions on both backends (the paged rows carry a threshold per layer and head)."""
    ref, paged = pair
    dms = ref.loaded.dms  # shared by both backends
    L, H = ref.loaded.config.num_hidden_layers, ref.loaded.config.num_key_value_heads
    dms.set_table({2.0: [[50.0 * (h - li) for h in range(H)] for li in range(L)],
                   4.0: [[-60.0 + 40.0 * h * li for h in range(H)] for li in range(L)]}, L, H)
    try:
        a = ref.generate("Tell me about the sea and the ships.", compression=3, max_tokens=12)
        b = paged.generate("Tell me about the sea and the ships.", compression=3, max_tokens=12)
    finally:
        dms.threshold_table = {}
    assert b.token_ids == a.token_ids
    assert a.usage.kv.evicted_tokens > 0 and b.usage.kv.evicted_tokens == a.usage.kv.evicted_tokens
    assert b.usage.kv.live_bytes == a.usage.kv.live_bytes


def test_concurrent_requests_in_a_tiny_pool_all_finish(tiny_dir):
    from budgetllm.engine.paged.backend import PagedBackend

    ref = LLM.from_pretrained(str(tiny_dir("llama", "adapter")), backend="reference", device="cpu", progress=False)
    # 2 layers x 2 heads = 4 rows per sequence; 64 pages of 4 tokens: ~1.5 requests at a time.
    backend = PagedBackend(ref.loaded, max_seqs=3, page_size=4, num_pages=64, cuda_graphs=False,
                           max_context=128, max_prefill_tokens=32)
    paged = LLM(ref.loaded, backend)
    prompts = ["Hi", "Name a color.", "Count to three please.", "Why?"]
    expected = [ref.generate(p, compression=1, max_tokens=6).token_ids for p in prompts]
    got, errors = run_concurrently(
        lambda i: paged.generate(prompts[i], compression=1, max_tokens=6).token_ids, len(prompts))
    assert not errors, errors
    assert [got.get(i) for i in range(len(prompts))] == expected
    stats = backend.pool_stats()
    assert stats["pages_used"] == stats["prefix_pages"] and stats["active"] == stats["queued"] == 0
    backend.close()


def test_cancel_frees_pages(pair):
    _, paged = pair
    stream = paged.stream("Tell me a long story.", compression=1, max_tokens=50)
    for event in stream:
        if event.kind == "text":
            break
    stream.close()
    backend = paged.backend
    for _ in range(200):
        if backend.pool_stats()["active"] == 0:
            break
        threading.Event().wait(0.05)
    stats = backend.pool_stats()
    assert stats["active"] == 0 and stats["pages_used"] == stats["prefix_pages"]


def test_graph_buckets_and_padding_rows(tiny_dir):
    """CUDA-graph batching emulated on the CPU: batches padded to buckets with frozen padding slots
    (their rows never take a page), warm-ups that take no page, same tokens as the reference."""
    from budgetllm.engine.paged.backend import PagedBackend

    ref = LLM.from_pretrained(str(tiny_dir("qwen2", "adapter")), backend="reference", device="cpu", progress=False)
    backend = PagedBackend(ref.loaded, max_seqs=5, page_size=4, num_pages=300, cuda_graphs=False,
                           emulate_graphs=True, max_context=128)
    r = backend.runner
    assert r.buckets == [1, 2, 4, 5] and len(r.pad_slots) == 5  # 1 for the buckets, 5 for a void step (step_io.py)
    assert backend.device_free_pages_now() == backend.pool_stats()["pages_total"]  # warm-ups took nothing
    paged = LLM(ref.loaded, backend)
    prompts = ["One.", "Two words.", "Three small words."]  # 3 rows: padded to the bucket of 4
    expected = [ref.generate(p, compression=8, max_tokens=5).token_ids for p in prompts]
    got, errors = run_concurrently(lambda i: paged.generate(prompts[i], compression=8, max_tokens=5).token_ids, 3)
    assert not errors, errors
    assert [got.get(i) for i in range(3)] == expected
    kv = r.kv
    pad = r.pad_slots[0]
    assert int(kv.seq_pos[pad]) == r.window + 1 and bool((kv.row_lens[:, pad] == 1).all())
    _clear(backend)
    assert backend.device_free_pages_now() == backend.pool_stats()["pages_total"]
    backend.close()


def test_next_turn_reuses_the_compressed_cache(pair):
    """Turn 2 = turn 1's prompt + its answer + new tokens: the paged engine prefills only the new
    tokens on top of the parked compressed rows, with the same result as the reference from scratch."""
    ref, paged = pair
    backend = paged.backend
    assert_next_turn_matches(ref, backend, list(range(1000, 1030)), extra=12, max_tokens=6)
    _clear(backend)
    assert backend.pool_stats()["pages_free"] == backend.pool_stats()["pages_total"] == \
        backend.device_free_pages_now()


def _clear(backend) -> None:
    backend.clear_prefix_cache()
    for _ in range(200):
        if backend.pool_stats()["parked"] == 0:
            break
        threading.Event().wait(0.02)
    threading.Event().wait(0.05)  # the release runs on the engine thread


def test_cancel_while_held_releases_on_the_device(pair):
    """A request cancelled after its first token (its consumer stops reading) while the engine may
    idle: its pages must go back on the device at once, not when the next command arrives."""
    ref, paged = pair
    backend = paged.backend
    steps = backend.run(request(ref.loaded, list(range(1000, 1040)), 1, 50))
    first = next(steps)  # the consumer reads one token and stops
    assert first.finished is None
    steps.close()  # cancel
    _clear(backend)
    total = backend.pool_stats()["pages_total"]
    for _ in range(200):
        if backend.device_free_pages_now() == total and backend.pool_stats()["active"] == 0:
            break
        threading.Event().wait(0.02)
    assert backend.device_free_pages_now() == total == backend.pool_stats()["pages_free"]
