"""Triton kernels of the paged DMS engine (torch + triton only). Layout: docs/engine-layout.md.

Naive PyTorch twins of every op live in ``budgetllm.kernels.reference`` (the test oracle).
"""

from budgetllm.kernels.decode_attention import paged_decode_attention
from budgetllm.kernels.fused_decoder import add_rms_norm, qkv_rope, silu_mul
from budgetllm.kernels.paged_kv import PagedKV, num_free_pages, release_rows
from budgetllm.kernels.prefill_attention import dms_prefill_attention
from budgetllm.kernels.qkv_store import qkv_store
from budgetllm.kernels.store_kv import store_decode_kv, store_prefill_kv

__all__ = [
    "PagedKV",
    "add_rms_norm",
    "dms_prefill_attention",
    "num_free_pages",
    "paged_decode_attention",
    "qkv_rope",
    "qkv_store",
    "release_rows",
    "silu_mul",
    "store_decode_kv",
    "store_prefill_kv",
]
