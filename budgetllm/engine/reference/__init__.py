"""The reference backend (``backend="reference"``): pure PyTorch over the HF model, any device.

Owns: the per-head row cache of one sequence (``sequence.ReferenceSequence``), the per-request
seeded sampler (``sampler``), and the request loop with prompt-prefix reuse (``backend``).
May use: torch, ``budgetllm.models``, ``budgetllm.dms`` and the shared engine modules
(``engine.request``, ``engine.eviction``, ``engine.rules``, ``engine.thinking``, ``engine.prefix_tree``).
Must not import: ``engine.paged`` (the other backend), ``budgetllm.kernels``, ``budgetllm.cache``.
"""

from budgetllm.engine.reference.backend import ReferenceBackend

__all__ = ["ReferenceBackend"]
