"""The engine: request state, thinking budgets, sampling, and the backends that run a model.

Owns: per-request state and the thinking-budget controller (torch-free), the scheduler, block
manager and prefix tree of kept cache states (conversation reuse, both backends; torch-free), the
model runner and sampler (torch), the backends "reference" (pure PyTorch over the HF model, any
device), "cpu" and "paged" (GPU), and the output side (``output.CallOutput``: steps -> stream events
-> Generation, torch-free). A call's plan arrives fitted by ``budgetllm.policy.fit``; the engine
enforces and reports it, never fits it again.
May use: ``budgetllm.models``, ``budgetllm.cache``, ``budgetllm.kernels``, ``budgetllm.dms``, and the
record types of ``budgetllm.policy`` / ``budgetllm.accounting``.
"""
