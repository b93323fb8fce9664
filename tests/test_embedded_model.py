"""The embedded SmolLM2-135M-Instruct end to end on CPU (real weights, offline)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_answers_a_question_with_measured_accounting(embedded_llm):
    out = embedded_llm.generate("What is the capital of France? Answer in one sentence.", compression=8, max_tokens=30)
    assert "Paris" in out.text
    kv = out.usage.kv
    assert kv.compression_requested == 8.0 and kv.compression_achieved >= 1.0
    assert kv.logical_bytes == (out.usage.input_tokens + out.usage.output_tokens - (out.finish_reason == "length")) * \
        embedded_llm.kv_shape.token_bytes


def test_long_prompt_compresses_at_least_3x(embedded_llm):
    """A 3K-token prompt at compression 8: the accounting measures at least 3x fewer live entries."""
    facts = " ".join(f"Item {i} is stored in box {(i * 7) % 13}." for i in range(330))
    out = embedded_llm.generate(facts + "\nWhich box holds item 5?", compression=8, max_tokens=8)
    assert out.usage.input_tokens > 3000
    assert out.usage.kv.compression_achieved >= 3.0
    assert out.usage.kv.live_bytes * 3 <= out.usage.kv.logical_bytes


def test_thinking_budget_on_the_real_model(embedded_llm):
    out = embedded_llm.generate("Is 91 a prime number?", thinking_budget=24, max_tokens=60, compression=8)
    assert 0 < out.usage.reasoning_tokens <= 24
    assert out.reasoning and "<think>" not in out.text
