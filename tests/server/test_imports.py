"""The client side needs neither torch nor FastAPI; nothing under budgetllm.server imports LangChain."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "budgetllm" / "server"
CLIENT_MODULES = ["client.py", "client_http.py", "wire.py"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0] if not node.module.startswith("budgetllm") else node.module)
    return names


@pytest.mark.parametrize("name", CLIENT_MODULES)
def test_client_modules_import_no_torch_or_fastapi(name):
    mods = imported_modules(SERVER / name)
    assert not mods & {"torch", "transformers", "fastapi", "starlette", "uvicorn", "pydantic"}, mods
    allowed = {"budgetllm.errors", "budgetllm.types", "budgetllm.policy.base", "budgetllm.policy.shipped", "budgetllm.server",
               "budgetllm.server.wire", "budgetllm.server.client_http",
               "budgetllm.tool_stream"}  # standard library only (import-linter contract in pyproject.toml)
    assert {m for m in mods if m.startswith("budgetllm")} <= allowed


def test_no_langchain_anywhere_in_the_server():
    for path in SERVER.glob("*.py"):
        assert not imported_modules(path) & {"langchain", "langchain_core", "langchain_openai"}, path


def test_importing_the_client_loads_no_torch():
    """Run in a fresh interpreter where torch cannot be imported at all."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['fastapi'] = None\n"
            "from budgetllm.server.client import RemoteLLM\n"
            "from budgetllm.server import RemoteLLM as R2\n"
            "assert R2 is RemoteLLM\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]  # an eager torch import is a bug, not an expected failure


def test_the_options_contract_and_protocol_load_no_torch():
    """ChatDMS and remote users type against these without an engine."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import budgetllm\n"
            "from budgetllm import CallOptions, LLMLike, validate_options, EFFORT_LEVELS\n"
            "from budgetllm.server.client import RemoteLLM\n"
            "assert 'compression' in CallOptions.field_names() and EFFORT_LEVELS[0] == 'none'\n"
            "members = [n for n in dir(LLMLike) if not n.startswith('_')]\n"
            "assert 'generate' in members and all(hasattr(RemoteLLM, n) for n in members), members\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
