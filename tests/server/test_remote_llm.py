"""RemoteLLM returns exactly what the local LLM returns, raises the same errors, and retries."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import API_KEY
from srv_fake_llm import FakeLLM
from srv_live import LiveServer, free_port, wait_until

from budgetllm.errors import InvalidRequestError, PoolExhaustedError, PromptTooLongError
from budgetllm.policy.base import AgentBudget, FixedPolicy
from budgetllm.server.app import create_app
from budgetllm.server.client import AuthenticationError, RemoteLLM, ServerUnavailableError

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CASES = [
    ("plain text", {}),
    ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
     {"thinking_budget": 2, "compression": 4.0, "max_tokens": 2, "temperature": 0.7, "seed": 3, "stop": ["x"]}),
    ([{"role": "user", "content": "weather in Paris?"}], {"tools": [TOOL], "tool_choice": "auto"}),
    ([{"role": "user", "content": "broken call"}], {"tools": [TOOL]}),
    ([{"role": "user", "content": "weather?"},
      {"role": "assistant", "content": None, "tool_calls": [
          {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "rain"}],
     {"policy_tier": "cheap", "reasoning_effort": "high", "tool_name": "get_weather",
      "agent_budget": AgentBudget(tokens_left=100, step=2)}),
]


@pytest.mark.parametrize(("messages", "opts"), CASES)
def test_generate_and_stream_equal_local(server, messages, opts):
    local = FakeLLM()
    remote = RemoteLLM(server.url + "/v1")
    assert remote.generate(messages, **opts) == local.generate(messages, **opts)
    assert list(remote.stream(messages, **opts)) == list(local.stream(messages, **opts))

    async def both():
        gen = await remote.agenerate(messages, **opts)
        events = [ev async for ev in remote.astream(messages, **opts)]
        return gen, events

    gen, events = asyncio.run(both())
    assert gen == local.generate(messages, **opts)
    assert events == list(local.stream(messages, **opts))


def test_the_agent_budget_reaches_the_server_engine_whole(server):
    """BudgetMiddleware's agent state (with the cap for calls after the budget is spent) is planned
    by the server's engine, so it must arrive as it was sent."""
    budget = AgentBudget(tokens_left=5, calls_left=0, step=3, max_tokens_when_spent=16)
    RemoteLLM(server.url + "/v1").generate("hi", agent_budget=budget)
    assert server.llm.calls[-1]["agent_budget"] == budget


def test_model_facts_and_count_tokens(server):
    remote, local = RemoteLLM(server.url), FakeLLM()
    assert remote.model_name == local.model_name and remote.max_context == local.max_context
    assert remote.profile == local.profile
    msgs = [{"role": "user", "content": "one two three"}]
    assert remote.count_tokens(msgs) == local.count_tokens(msgs)
    assert remote.count_tokens(msgs, tools=[TOOL]) == local.count_tokens(msgs, tools=[TOOL])
    assert remote.count_tokens("a b") == local.count_tokens("a b")
    stats = remote.pool_stats()
    assert stats["pages_total"] == 100 and stats["active"] == 0


def test_errors_are_the_local_ones(server):
    remote = RemoteLLM(server.url)
    with pytest.raises(PromptTooLongError) as info:
        remote.generate("word " * 100)
    assert (info.value.prompt_tokens, info.value.max_context) == (102, 64)
    with pytest.raises(PromptTooLongError):
        next(remote.stream("word " * 100))
    with pytest.raises(InvalidRequestError) as info:
        remote.generate("hi", policy_tier="nope")
    assert info.value.field == "policy_tier" and str(info.value).startswith("policy_tier: no tier 'nope'")
    with pytest.raises(InvalidRequestError) as info:
        remote.generate("hi", thinking_budget=-1)
    assert info.value.field == "thinking_budget"
    with pytest.raises(PoolExhaustedError):
        remote.generate("pool is full")
    # Options that cannot cross the wire fail before anything is sent.
    with pytest.raises(InvalidRequestError, match="policy_tier"):
        remote.generate("hi", policy=FixedPolicy())
    with pytest.raises(InvalidRequestError, match="unknown option"):
        remote.stream("hi", temperatur=0.5)
    assert len(server.llm.calls) == 4  # the too-long prompts, the bad tier, the full pool


def test_api_key(keyed_server):
    assert RemoteLLM(keyed_server.url, api_key=API_KEY).generate("hi").text.startswith("echo0:hi")
    with pytest.raises(AuthenticationError, match="401"):
        RemoteLLM(keyed_server.url, api_key="nope").generate("hi")
    with pytest.raises(AuthenticationError):
        RemoteLLM(keyed_server.url).model_name  # noqa: B018


def test_connection_errors_retry_then_fail_clearly(monkeypatch):
    """Three attempts with exponential backoff between them (counted, not timed)."""
    import budgetllm.server.client_http as client_http

    waits: list[float] = []
    monkeypatch.setattr(client_http.time, "sleep", waits.append)
    port = free_port()  # nothing listens here
    remote = RemoteLLM(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.01, connect_timeout=1)
    with pytest.raises(ServerUnavailableError, match="after 3 attempts"):
        remote.generate("hi")
    assert len(waits) == 2  # a wait before each retry, none after the last attempt
    assert 0.005 <= waits[0] <= 0.01 and 0.01 <= waits[1] <= 0.02  # backoff * 2**n, with jitter in [0.5, 1)


def test_retry_reaches_a_server_that_starts_late():
    """A client started before its server (e.g. both launched together) connects once it is up."""
    port = free_port()
    remote = RemoteLLM(f"http://127.0.0.1:{port}", max_retries=6, backoff=0.2)
    holder: dict = {}

    def start_late():
        time.sleep(0.5)
        holder["srv"] = LiveServer(create_app(FakeLLM()), port=port).__enter__()

    t = threading.Thread(target=start_late)
    t.start()
    try:
        assert remote.generate("late").text.startswith("echo0:late")
    finally:
        t.join(10)
        if "srv" in holder:
            holder["srv"].__exit__(None, None, None)


def test_closing_a_remote_stream_cancels_on_the_server():
    slow = FakeLLM(delay=0.3, pieces=50)
    with LiveServer(create_app(slow)) as srv:
        remote = RemoteLLM(srv.url)
        it = remote.stream("long answer please")
        first = next(it)
        assert first.kind == "text"
        it.close()
        assert wait_until(lambda: slow.cancelled == 1, timeout=10)
        assert slow.finished == 0 and slow.active == 0

        async def async_case():
            agen = remote.astream("long again")
            assert (await agen.__anext__()).kind == "text"
            await agen.aclose()

        asyncio.run(async_case())
        assert wait_until(lambda: slow.cancelled == 2, timeout=10)
        assert slow.active == 0


def test_the_embedded_models_shipped_calibration_is_in_the_remote_profile_too():
    """The table does not travel (it is package data): the client looks it up by the model's name,
    so a remote profile equals the local one for the embedded model as for any other."""
    from budgetllm.models.loading import EMBEDDED_NAME
    from budgetllm.policy.shipped import shipped_calibration

    class Embedded(FakeLLM):
        model_name = EMBEDDED_NAME

        @property
        def profile(self):
            import dataclasses

            return dataclasses.replace(super().profile, calibration=shipped_calibration(EMBEDDED_NAME))

    with LiveServer(create_app(Embedded())) as srv:
        remote, local = RemoteLLM(srv.url).profile, Embedded().profile
    assert remote == local and remote.calibration is not None and remote.calibration.points
