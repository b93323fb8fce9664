"""The KV pool is sized from gpu_memory_utilization of the TOTAL device memory, less what the process
already holds; a model that does not fit gets an error naming the setting (CPU: device numbers faked)."""

from __future__ import annotations

import pytest
import torch

from budgetllm.cache import pool as pool_module
from budgetllm.cache.layout import PageLayout
from budgetllm.cache.pool import PoolConfig, size_pool
from budgetllm.cache.sizing import kv_pool_budget
from budgetllm.errors import InvalidRequestError

GIB = 1 << 30
LAYOUT = PageLayout(16, 64, 2, 24, 8, 512, 256)  # page_size, head_dim, dtype bytes, layers, kv heads, window, pages/row


def pages(monkeypatch, *, total, free, held, utilization=0.85, max_seqs=8):
    monkeypatch.setattr(pool_module, "device_memory", lambda device: (total, free, held))
    cfg = PoolConfig(memory_fraction=utilization, max_seqs=max_seqs)
    return size_pool(LAYOUT, cfg, torch.device("cuda"))


def test_budget_is_a_share_of_total_minus_what_is_held():
    assert kv_pool_budget(total=100 * GIB, free=90 * GIB, held=10 * GIB, utilization=0.85, headroom=GIB) == 74 * GIB
    # other processes use the card: never more than is free
    assert kv_pool_budget(total=100 * GIB, free=30 * GIB, held=0, utilization=0.85, headroom=GIB) == 29 * GIB
    for bad in (0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(InvalidRequestError) as e:
            kv_pool_budget(total=GIB, free=GIB, held=0, utilization=bad, headroom=0)
        assert e.value.field == "gpu_memory_utilization"


def test_loading_again_in_one_process_does_not_shrink_the_pool(monkeypatch):
    """The defect: sized from *free* memory, every reload (or second model) got 85% of what was left."""
    first = pages(monkeypatch, total=140 * GIB, free=124 * GIB, held=16 * GIB)
    again = pages(monkeypatch, total=140 * GIB, free=124 * GIB, held=16 * GIB)  # after close(): same numbers
    assert first == again and first * LAYOUT.page_bytes > 90 * GIB


def test_a_second_model_that_does_not_fit_names_the_setting(monkeypatch):
    first = pages(monkeypatch, total=80 * GIB, free=64 * GIB, held=16 * GIB, utilization=0.5)
    assert first * LAYOUT.page_bytes > 20 * GIB
    with pytest.raises(InvalidRequestError) as e:  # the first one now holds 40 GiB of the 0.5 * 80
        pages(monkeypatch, total=80 * GIB, free=40 * GIB, held=40 * GIB, utilization=0.5)
    assert e.value.field == "gpu_memory_utilization"
    assert "gpu_memory_utilization=0.5" in str(e.value) and "close another LLM" in str(e.value)
    # with a larger share both fit
    assert pages(monkeypatch, total=80 * GIB, free=40 * GIB, held=40 * GIB, utilization=0.9) > 0


def test_explicit_num_pages_wins(monkeypatch):
    monkeypatch.setattr(pool_module, "device_memory", lambda device: pytest.fail("not read"))
    assert size_pool(LAYOUT, PoolConfig(num_pages=77), torch.device("cuda")) == 77
