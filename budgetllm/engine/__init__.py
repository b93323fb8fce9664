"""The engine: request state, thinking budgets, sampling, and the backends that run a model.

Owns: per-request state and the thinking-budget controller (torch-free), the scheduler, block
manager and prefix tree of kept cache states (conversation reuse, both backends) of the paged engine
(torch-free), the model runner and sampler (torch), and the backends
"reference" (pure PyTorch over the HF model, any device) and "paged" (GPU).
May use: ``budgetllm.models``, ``budgetllm.cache``, ``budgetllm.kernels``, ``budgetllm.dms``, and the
record types of ``budgetllm.policy`` / ``budgetllm.accounting``.
"""
