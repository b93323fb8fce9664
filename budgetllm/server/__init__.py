"""OpenAI-compatible HTTP server for an LLM, and its client.

Owns: the HTTP edge (body reading and limits in ``http_body``, pydantic request models whose bounds come
from ``budgetllm.options``, OpenAI wire format with budgetllm extras), the
``budgetllm serve`` command, ``/metrics``, and ``RemoteLLM`` (the LLM surface over HTTP).
Must not import: LangChain. ``client`` and ``wire`` must stay free of torch and FastAPI, so a
remote user installs neither; hence the lazy names below instead of eager imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RemoteLLM", "create_app", "run_server", "add_serve_subcommand", "serve_command"]

_WHERE = {
    "RemoteLLM": "budgetllm.server.client",
    "create_app": "budgetllm.server.app",
    "run_server": "budgetllm.server.cli",
    "add_serve_subcommand": "budgetllm.server.cli",
    "serve_command": "budgetllm.server.cli",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'budgetllm.server' has no attribute {name!r}")
