"""The engine: one request type, one per-token step, two backends (split as nano-vllm's engine is).

Owns, shared and torch-free: the request and step types (``request``), the one per-token step
both loops apply (``step``), the thinking-budget controller (``thinking``), the prefix tree of kept
cache states (``prefix_tree``, conversation reuse in both backends), detokenization (``detok``) and
the output side (``output.CallOutput``: steps -> stream events -> Generation). Shared, with torch:
the call's eviction rule (``eviction.EvictionRule``) and its row encoding (``rules``, the eager
definition of the kernel's decision). The backends: ``reference`` (pure PyTorch over the HF model,
any device), ``cpu`` (a reference backend with a fused CPU forward) and ``paged`` (the GPU engine:
scheduler, block manager, model runner, GPU sampler). Each implements :class:`Backend`. The layout,
the import rules and the path of a call's ``compression`` are in docs/engine-layout.md.
A call's plan arrives fitted by ``budgetllm.policy.fit``; the engine enforces and reports it.
May use: ``budgetllm.models``, ``budgetllm.dms``, the record types of ``budgetllm.policy`` /
``budgetllm.accounting``; ``budgetllm.kernels`` and ``budgetllm.cache`` from ``engine.paged`` only.
Must not import: ``budgetllm.llm``, ``budgetllm.server``, LangChain; the backends do not import
each other (``cpu`` builds on ``reference``); this ``__init__`` imports nothing at run time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from budgetllm.engine.request import GenerationRequest, StepOutput


@runtime_checkable
class Backend(Protocol):
    """What ``LLM`` needs of a backend: run a request, report the pool, release everything."""

    name: str

    def run(self, req: GenerationRequest) -> Iterator[StepOutput]:
        """Prefill ``req`` and yield its outputs (``engine.step.advance``'s) until one finishes;
        closing the iterator (or setting ``req.cancelled``) cancels the request."""
        ...

    def pool_stats(self) -> dict:
        """The backend's counters (active, queued, tokens_generated, prefix reuse, pages ...)."""
        ...

    def close(self) -> None:
        """Release the model, the KV memory and any thread; idempotent."""
        ...


__all__ = ["Backend"]
