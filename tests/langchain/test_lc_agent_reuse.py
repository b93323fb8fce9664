"""An agent built with ``create_agent(ChatDMS(...))`` reuses its compressed history from its second
model call on: ``usage_metadata.input_token_details.cache_read`` and the memory report say so.

A real model (a tiny random Qwen3 checkpoint on the CPU, reference backend) answers every call; a
random model never decides to call a tool, so a middleware turns its first answer into a call of
``lookup`` (the text the model wrote stays). The second call's prompt then re-renders that answer
with the call markup, which differs from what the model produced: the state kept at the first
prompt's end still matches, so the whole first prompt comes from the cache.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import wrap_model_call  # noqa: E402
from langchain_budgetllm import ChatDMS, get_dms_usage_callback  # noqa: E402
from langchain_core.messages import AIMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402


@tool
def lookup(key: str) -> str:
    """Look a word up in the agent's notes."""
    return f"The note for {key} says: the answer is SEVEN, spelled in capitals, and nothing else."


@wrap_model_call
def call_lookup_first(request, handler):
    """The model's first answer becomes a call of ``lookup`` (its usage and metadata kept)."""
    response = handler(request)
    if any(isinstance(m, ToolMessage) for m in request.messages):
        return response
    ai = response.result[0]
    call = {"name": "lookup", "args": {"key": "seven"}, "id": "call_1", "type": "tool_call"}
    return AIMessage(ai.content, tool_calls=[call], usage_metadata=ai.usage_metadata,
                     response_metadata=ai.response_metadata, id=ai.id)


@pytest.fixture(scope="module")
def calibrated_dir(tiny_dir, tmp_path_factory):
    """The tiny DMS checkpoint with a threshold table: without one, a compressed call calibrates its
    thresholds on its own prompt, so two calls never share a rule and nothing can be reused."""
    import random
    import shutil

    from budgetllm import LLM
    from budgetllm.dms.export import write_thresholds
    from budgetllm.dms.thresholds import fit_threshold_table
    from budgetllm.models.loading import THRESHOLDS_FILE

    src = tiny_dir("qwen3", "borrowed")
    dst = tmp_path_factory.mktemp("tiny-qwen3-table") / "ckpt"
    shutil.copytree(src, dst)
    loaded = LLM.from_pretrained(str(src), backend="reference", device="cpu", progress=False).loaded
    rng = random.Random(0)
    table, _ = fit_threshold_table(loaded, [[rng.randrange(5, 200) for _ in range(96)] for _ in range(4)])
    write_thresholds(dst / THRESHOLDS_FILE, table)
    return dst


@pytest.mark.filterwarnings("error:.*has no threshold table")
@pytest.mark.parametrize("compression", [1.0, 4.0])
def test_agent_second_call_reads_its_history_from_the_cache(calibrated_dir, one_torch_thread, compression):
    model = ChatDMS(model=str(calibrated_dir), backend="reference", device="cpu",
                    temperature=0, max_tokens=6, compression=compression)
    agent = create_agent(model, tools=[lookup], middleware=[call_lookup_first],
                         system_prompt="You are a terse agent. Use the lookup tool, then answer.")
    with get_dms_usage_callback() as cb:
        out = agent.invoke({"messages": [{"role": "user", "content": "What does the note for seven say?"}]})
    ai = [m for m in out["messages"] if isinstance(m, AIMessage)]
    assert len(ai) == 2 and ai[0].tool_calls and isinstance(out["messages"][2], ToolMessage)
    first, second = (m.usage_metadata for m in ai)
    assert first["input_token_details"]["cache_read"] == 0
    # the second call's prompt extends the first one: all of the first prompt is served from the cache
    assert first["input_tokens"] <= second["input_token_details"]["cache_read"] < second["input_tokens"]
    # the memory report (the usage callback) counts the same
    assert [c.cached_tokens for c in cb.calls] == [0, second["input_token_details"]["cache_read"]]
    total = next(iter(cb.totals.values()))
    assert total.cached_tokens == second["input_token_details"]["cache_read"]
    assert f"({total.cached_tokens} from cache)" in cb.report()
