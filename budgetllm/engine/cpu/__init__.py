"""The CPU backend (``backend="cpu"``, the default without a GPU): DMS decode without per-head loops.

Owns: the padded per-(layer, KV head) row cache of one sequence with its ring of the window
(``cache``), the decoder forward on fused weights (``sequence``), and the backend that plugs them
into the reference backend's request loop (``backend``). See docs/cpu.md.
May use: torch, transformers, ``budgetllm.dms`` (decision logits, RoPE), ``budgetllm.models``, and
``budgetllm.engine``'s reference backend, eviction rule and request types.
Must not import: ``budgetllm.kernels`` or triton (a CPU install has no Triton), ``budgetllm.cache``
(the GPU page pool), ``engine.paged``, policy, accounting internals, server.
"""

from budgetllm.engine.cpu.backend import CPUBackend

__all__ = ["CPUBackend"]
