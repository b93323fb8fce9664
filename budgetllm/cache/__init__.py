"""The paged per-(sequence, layer, KV head) KV pool of the GPU engine: sizing, byte arithmetic, setup.

Owns: how many pages fit in ``gpu_memory_utilization`` of the total GPU memory (``sizing.py``,
``pool.py``), what a page costs in bytes and what ``reserved_bytes`` means (``layout.py``, torch-free),
copy-on-write sharing of pages between slots (``sharing.py``: forks of kept cache states,
reference-counted release). The device tensors and their kernels are
``budgetllm.kernels.PagedKV`` (layout: docs/engine-layout.md).
May use: torch, ``budgetllm.kernels``. Must not import: engine, policy, accounting.
"""

from budgetllm.cache.layout import PageLayout
from budgetllm.cache.pool import PoolConfig, build_pool

__all__ = ["PageLayout", "PoolConfig", "build_pool"]
