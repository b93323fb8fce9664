"""``LLMLike``: what a local ``LLM`` and a ``RemoteLLM`` share, for code that takes either.

LangChain's ChatDMS, agents and the HTTP server type against this Protocol instead of ``Any``.
Torch-free (a Protocol only names methods). Per-call keyword arguments (``**opts``) are the
fields of :class:`budgetllm.options.CallOptions`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol, runtime_checkable

from budgetllm.policy.base import ModelProfile
from budgetllm.types import Generation, StreamEvent


@runtime_checkable
class LLMLike(Protocol):
    @property
    def model_name(self) -> str: ...

    @property
    def max_context(self) -> int: ...

    @property
    def profile(self) -> ModelProfile: ...

    def count_tokens(self, messages: Any, tools: list[dict[str, Any]] | None = None) -> int: ...

    def pool_stats(self) -> dict: ...

    def generate(self, messages: Any, **opts: Any) -> Generation: ...

    async def agenerate(self, messages: Any, **opts: Any) -> Generation: ...

    def stream(self, messages: Any, **opts: Any) -> Iterator[StreamEvent]: ...

    def astream(self, messages: Any, **opts: Any) -> AsyncIterator[StreamEvent]: ...

    def close(self) -> None: ...


__all__ = ["LLMLike"]
