"""The engines behind ChatDMS (local and shared per model, or one HTTP client per server) and its
model profile, whose context length is read from the engine only when asked for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import budgetllm

_REMOTE: dict[tuple, budgetllm.RemoteLLM] = {}
_REMOTE_LOCK = threading.Lock()


def remote_llm(base_url: str, api_key: str | None, timeout: float | None, max_retries: int | None) -> budgetllm.RemoteLLM:
    """One shared client per (server, key, timeout, retries)."""
    key = (base_url, api_key, timeout, max_retries)
    with _REMOTE_LOCK:
        if key not in _REMOTE:
            kwargs: dict[str, Any] = {"api_key": api_key}
            if timeout is not None:
                kwargs["timeout"] = timeout
            if max_retries is not None:
                kwargs["max_retries"] = max_retries
            _REMOTE[key] = budgetllm.RemoteLLM(base_url, **kwargs)
        return _REMOTE[key]


def chat_profile(max_tokens: int | None, context: Callable[[], int | None]) -> LazyProfile:
    """ChatDMS's model profile: what it can do, its output cap, and (read lazily) its context length.
    ``context`` loads the engine; an engine that fails to load leaves the context length out."""
    static: dict[str, Any] = {
        "text_inputs": True, "text_outputs": True, "reasoning_output": True, "tool_calling": True,
        "tool_choice": True,  # a grammar forces the call (budgetllm.constrain)
        "structured_output": True,  # response_format json_schema / json_object, constrained
    }  # fmt: skip
    if max_tokens:
        static["max_output_tokens"] = max_tokens

    def safe_context() -> int | None:
        try:
            return context()
        except Exception:
            return None

    return LazyProfile(static, safe_context)


class LazyProfile(dict):
    """A model profile whose ``max_input_tokens`` is read from the engine on first use.

    The engine (and so the context length) loads only when someone asks for the context length,
    so constructing ChatDMS stays cheap.
    """

    def __init__(self, static: dict[str, Any], context: Callable[[], int | None]):
        super().__init__(static)
        self._context = context
        self._filled = False

    def _fill(self) -> None:
        if not self._filled:
            self._filled = True
            n = self._context()
            if n:
                dict.__setitem__(self, "max_input_tokens", int(n))

    def __getitem__(self, key: str) -> Any:
        if key == "max_input_tokens":
            self._fill()
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key == "max_input_tokens":
            self._fill()
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if key == "max_input_tokens":
            self._fill()
        return super().__contains__(key)

    # Iteration and keys() do not load (LangChain checks the profile's keys on construction);
    # items(), values() and copy() do.
    def items(self):
        self._fill()
        return super().items()

    def values(self):
        self._fill()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._fill()
        return dict(super().items())
