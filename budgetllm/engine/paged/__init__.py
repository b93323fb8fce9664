"""The paged backend (``backend="paged"``, GPU): continuous batching over a paged, compressed KV pool.

Owns: request state as the scheduler sees it (``sequence``), the scheduler and block manager
(``scheduler``, ``block_manager``; torch-free like ``sequence``), the per-request host side
(``handle``), the model runner with its CUDA graphs, prefill and decode layer (``model_runner``,
``cuda_graphs``, ``prefill``, ``prefill_graphs``, ``decode_layer``; ``kernel_count`` counts the
prefill's kernels per layer), the GPU sampler (``sampler``) and the engine
thread (``backend.PagedBackend``), in the shape of nano-vllm.
May use: torch, triton, ``budgetllm.kernels``, ``budgetllm.cache``, ``budgetllm.models``,
``budgetllm.dms`` and the shared engine modules.
Must not import: ``engine.reference`` (the other backend).

This ``__init__`` imports nothing, so that the torch-free modules (``sequence``, ``scheduler``,
``block_manager``) load without torch; import the backend from ``budgetllm.engine.paged.backend``.
"""
