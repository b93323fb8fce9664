"""Resumed turns: a later call whose prompt extends an earlier one reuses its compressed cache exactly."""

from __future__ import annotations

from budgetllm import LLM


def test_second_turn_reuses_the_compressed_prefix_and_matches_a_fresh_run(tiny_dir):
    path = str(tiny_dir("qwen3", "borrowed"))
    llm = LLM.from_pretrained(path, backend="reference", device="cpu", progress=False)
    fresh = LLM.from_pretrained(path, backend="reference", device="cpu", progress=False)
    fresh.backend.prefix_cache = False
    turn1 = [{"role": "user", "content": "word " * 120}]
    a = llm.generate(turn1, compression=8, max_tokens=6)
    assert a.usage.cached_tokens == 0
    turn2 = turn1 + [{"role": "assistant", "content": a.text}, {"role": "user", "content": "and again " * 10}]
    b = llm.generate(turn2, compression=8, max_tokens=6)
    c = fresh.generate(turn2, compression=8, max_tokens=6)
    assert b.usage.cached_tokens > 120  # the first turn's prompt was not prefilled again
    assert b.token_ids == c.token_ids
    assert b.usage.kv.live_bytes == c.usage.kv.live_bytes and b.usage.kv.evicted_tokens == c.usage.kv.evicted_tokens
    # A different compression is a different cache: nothing is reused. (Ratios calibrated on the
    # prompt itself, when the model has no threshold table, never reuse: each prompt sets its own.)
    d = llm.generate(turn2, compression=2, max_tokens=2)
    assert d.usage.cached_tokens == 0
