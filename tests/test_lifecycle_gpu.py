"""GPU memory is given back: load, generate, close five times in one process and
``torch.cuda.memory_allocated()`` returns to the baseline; a second model that does not fit the
``gpu_memory_utilization`` share gets an error naming that setting. Run on the GPU machine."""

from __future__ import annotations

import gc

import pytest
import torch

from budgetllm import LLM, InvalidRequestError

pytestmark = pytest.mark.gpu

MIB = 1 << 20


def _allocated() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def _load(path: str, utilization: float) -> LLM:
    return LLM.from_pretrained(path, device="cuda", backend="paged", dtype=torch.float32, progress=False,
                               max_seqs=4, max_context=512, gpu_memory_utilization=utilization)


def test_load_close_five_times_returns_to_the_baseline(tiny_dir):
    path = str(tiny_dir("llama", "borrowed"))
    base = _allocated()
    after = []
    for _ in range(5):
        with _load(path, 0.3) as llm:
            assert llm.generate("hi", max_tokens=4, compression=4).usage.output_tokens == 4
            assert _allocated() > base + 100 * MIB  # the pool is there
            thread = llm.backend._thread
        assert not thread.is_alive()
        after.append(_allocated())
    assert after[-1] <= base + MIB, (base, after)  # back to the baseline, not creeping up
    assert max(after) - min(after) <= MIB, after


def test_a_second_model_that_does_not_fit_names_gpu_memory_utilization(tiny_dir):
    path = str(tiny_dir("llama"))
    first = _load(path, 0.5)
    try:
        with pytest.raises(InvalidRequestError) as e:
            _load(path, 0.5)  # the first already holds its 0.5 share
        assert e.value.field == "gpu_memory_utilization" and "close another LLM" in str(e.value)
    finally:
        first.close()
    with _load(path, 0.5) as second:  # once the first is closed, it fits
        assert second.generate("hi", max_tokens=2).usage.output_tokens == 2
