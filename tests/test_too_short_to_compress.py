"""The accounting says when a call was too short to compress: DMS and the sliding window drop only
tokens that have left the window, so a call that fits in it keeps everything (achieved 1.00x)."""

from __future__ import annotations

from budgetllm import KVMemory, Usage
from budgetllm.accounting.log import too_short_to_compress, usage_rows


def _usage(tokens_in, tokens_out, requested, window, mode="dms"):
    return Usage(input_tokens=tokens_in, output_tokens=tokens_out,
                 kv=KVMemory(compression_requested=requested, window=window, mode=mode))


def test_rule():
    assert too_short_to_compress(_usage(100, 50, 8, 256))
    assert too_short_to_compress(_usage(200, 56, 8, 256))          # 256 tokens: all still inside
    assert not too_short_to_compress(_usage(200, 57, 8, 256))      # one token left the window
    assert not too_short_to_compress(_usage(100, 50, 1, 256))      # dense was asked for
    assert not too_short_to_compress(_usage(100, 50, 8, 0, "dense"))
    rows = dict(usage_rows(_usage(100, 50, 8, 256)))
    assert "150 tokens fit in the 256-token window" in rows["why not compressed"]
    assert "why not compressed" not in dict(usage_rows(_usage(400, 50, 8, 256)))


def test_engine_reports_its_window(tiny_llm):
    llm = tiny_llm("llama", "adapter")
    window = llm.loaded.dms.window
    short = llm.generate("hi", compression=4, max_tokens=2)
    assert short.usage.kv.mode == "dms" and short.usage.kv.window == window
    long = llm.generate("count: " + " ".join(str(i) for i in range(40)), compression=4, max_tokens=8)
    assert long.usage.total_tokens > window and not too_short_to_compress(long.usage)
    dense = llm.generate("hi", compression=1, max_tokens=2)
    assert not too_short_to_compress(dense.usage)
    plain = tiny_llm("llama")  # no decisions: the training-free window keeps its sinks as well
    w = plain.generate("hi", compression=4, max_tokens=2).usage.kv
    assert w.mode == "window" and w.window >= 64
