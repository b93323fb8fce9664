"""``python tests/server/srv_fake_server.py PORT [API_KEY]``: the FakeLLM test double behind a real
server in its own process (for tests of clients and agents across processes). Loopback only."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn  # noqa: E402
from srv_fake_llm import FakeLLM  # noqa: E402

from budgetllm.server.app import create_app  # noqa: E402

if __name__ == "__main__":
    port = int(sys.argv[1])
    key = sys.argv[2] if len(sys.argv) > 2 else None
    uvicorn.run(create_app(FakeLLM(), api_key=key), host="127.0.0.1", port=port, log_level="warning")
