"""LangChain integration of budgetllm: the ChatDMS chat model, a budget middleware for agents,
and token / KV-memory callbacks.

    from langchain_budgetllm import ChatDMS, BudgetMiddleware, get_dms_usage_callback

Imports only ``budgetllm``'s public API, ``langchain_core`` and (for the middleware)
``langchain.agents``.
"""

from langchain_budgetllm.callbacks import DMSMemoryCallbackHandler, get_dms_usage_callback
from langchain_budgetllm.chat_models import ChatDMS

try:  # the middleware needs `langchain` (agents); the chat model needs only langchain-core
    from langchain_budgetllm.middleware import BudgetMiddleware
except ImportError:  # pragma: no cover
    BudgetMiddleware = None  # type: ignore[assignment,misc]

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("budgetllm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["BudgetMiddleware", "ChatDMS", "DMSMemoryCallbackHandler", "get_dms_usage_callback"]
