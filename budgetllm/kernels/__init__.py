"""Triton kernels of the paged DMS engine (torch + triton only). Layout: docs/engine-layout.md.

Naive PyTorch twins of every op live in ``budgetllm.kernels.reference`` (the test oracle).
"""

from budgetllm.kernels.decode_attention import paged_decode_attention
from budgetllm.kernels.paged_kv import PagedKV, num_free_pages, release_rows
from budgetllm.kernels.prefill_attention import dms_prefill_attention
from budgetllm.kernels.store_kv import store_decode_kv, store_prefill_kv

__all__ = [
    "PagedKV",
    "dms_prefill_attention",
    "num_free_pages",
    "paged_decode_attention",
    "release_rows",
    "store_decode_kv",
    "store_prefill_kv",
]
