"""ChatDMS on the embedded SmolLM2-135M (CPU): parity, reasoning, budgets, callbacks, the example agent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from langchain_budgetllm import get_dms_usage_callback
from langchain_core.messages import HumanMessage

pytestmark = pytest.mark.slow

PROMPT = [HumanMessage("What is 3 + 4?")]


def _merge(chunks):
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


def _key(m):
    return (m.content, m.additional_kwargs.get("reasoning_content"), m.usage_metadata["input_tokens"],
            m.usage_metadata["output_tokens"], m.usage_metadata["output_token_details"]["reasoning"])


async def test_greedy_parity_sync_async_stream_invoke(real_chat):
    chat = real_chat.bind(max_tokens=12, thinking_budget=6)
    results = [
        chat.invoke(PROMPT),
        _merge(list(chat.stream(PROMPT))),
        await chat.ainvoke(PROMPT),
        _merge([c async for c in chat.astream(PROMPT)]),
    ]
    assert len({_key(r) for r in results}) == 1, [_key(r) for r in results]
    msg = results[0]
    assert msg.content and msg.additional_kwargs["reasoning_content"]
    assert msg.additional_kwargs["reasoning_content"] not in msg.content
    # the budget counts the tokens of the forced close, so reasoning never exceeds it
    assert 0 < msg.usage_metadata["output_token_details"]["reasoning"] <= 6


def test_per_call_compression_and_memory_metadata(real_chat):
    with get_dms_usage_callback() as cb:
        dense = real_chat.invoke(PROMPT, compression=1, max_tokens=8)
        squeezed = real_chat.invoke(PROMPT, compression=4, max_tokens=8)
    assert dense.response_metadata["kv_memory"]["compression_requested"] == 1.0
    assert squeezed.response_metadata["kv_memory"]["compression_requested"] == 4.0
    assert dense.response_metadata["budget_plan"]["compression"] == 1.0
    assert squeezed.response_metadata["kv_memory"]["live_bytes"] <= dense.response_metadata["kv_memory"]["logical_bytes"]
    assert [c.compression_requested for c in cb.calls] == [1.0, 4.0]
    assert cb.totals[dense.response_metadata["model_name"]].calls == 2
    assert real_chat.get_num_tokens_from_messages(PROMPT) == dense.usage_metadata["input_tokens"]


def test_instances_share_one_engine(real_chat):
    from concurrent.futures import ThreadPoolExecutor

    from langchain_budgetllm import ChatDMS
    from lc_fakes import REAL_PARAMS

    other = ChatDMS(**{**REAL_PARAMS, "compression": 2})
    assert other.llm is real_chat.llm
    with ThreadPoolExecutor(2) as pool:  # concurrent calls on the shared engine
        msgs = list(pool.map(lambda m: m.invoke(PROMPT, max_tokens=4), [real_chat, other]))
    assert [m.response_metadata["kv_memory"]["compression_requested"] for m in msgs] == [8.0, 2.0]


def test_engine_errors_name_the_field(real_chat):
    with pytest.raises(ValueError, match="compression"):
        real_chat.invoke(PROMPT, compression=-1)


def test_example_agent_runs_end_to_end(real_chat, capsys):  # real_chat: the model is loaded once
    path = Path(__file__).resolve().parents[2] / "examples" / "agent.py"
    spec = importlib.util.spec_from_file_location("example_agent", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the example's dataclass needs its module registered
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    result = module.main(["--max-tokens", "24", "--device", "cpu", "--backend", "reference"])
    out = capsys.readouterr().out
    assert "KV memory report" in out and "total" in out
    assert result["calls"] >= 2 and len(result["answers"]) == 2
    # the long-context step: the call that reads the incident report is compressed, and explained
    assert max(c["compression_achieved"] or 1.0 for c in result["usage"]["calls"]) > 1.5
    assert "Why each ratio is what it is" in out and "task 2, call 1:" in out
