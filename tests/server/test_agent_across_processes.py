"""A LangChain agent in this process, its model in another: ChatDMS(base_url=...) -> budgetllm server.

The server process runs the FakeLLM test double (a random tiny model cannot call tools on purpose);
the real-model path across processes is in test_real_model.py::test_serve_command_across_processes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from srv_live import free_port

pytest.importorskip("langchain_core", reason="langchain-core is not installed")
agents = pytest.importorskip("langchain.agents", reason="langchain is not installed")
lc_budgetllm = pytest.importorskip("langchain_budgetllm", reason="the LangChain integration is not importable")

SERVER_SCRIPT = Path(__file__).resolve().parent / "srv_fake_server.py"


@pytest.fixture()
def server_process():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER_SCRIPT), str(port), "sk-agent"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from budgetllm.server.client import RemoteLLM

    probe = RemoteLLM(f"http://127.0.0.1:{port}", max_retries=0, timeout=5)
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                probe.health()
                break
            except Exception:
                assert time.monotonic() < deadline, "the server process did not start in 60 s"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_agent_runs_against_a_server_in_another_process(server_process):
    from langchain_core.tools import tool

    calls = []

    @tool
    def get_weather(city: str, days: int = 1) -> str:
        """The weather forecast of a city."""
        calls.append((city, days))
        return "sunny"

    model = lc_budgetllm.ChatDMS(base_url=server_process, api_key="sk-agent", thinking_budget=2)
    agent = agents.create_agent(model, tools=[get_weather])
    out = agent.invoke({"messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
    assert calls == [("Paris", 2)]
    messages = out["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"]
    assert messages[1].tool_calls[0]["name"] == "get_weather"
    final = messages[-1]
    assert final.content.startswith("echo0:sunny")
    # Usage and memory metadata crossed the process boundary like in local mode.
    assert final.usage_metadata["output_token_details"]["reasoning"] == 2
    assert final.response_metadata["kv_memory"]["mode"] == "dms"

    with pytest.raises(Exception, match="401|API key"):
        lc_budgetllm.ChatDMS(base_url=server_process, api_key="wrong").invoke("hi")
