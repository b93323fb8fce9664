"""The official openai client and langchain-openai's ChatOpenAI against the server, unchanged."""

from __future__ import annotations

import json

import openai
import pytest

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0,
                         timeout=10, **kw)


def test_non_streamed_round_trip_with_reasoning_usage_and_kv_memory(server):
    resp = client(server).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hello there"}],
        extra_body={"thinking_budget": 2, "compression": 4, "policy_tier": "cheap", "reasoning_effort": "low"},
    )
    msg = resp.choices[0].message
    assert msg.content == "echo0:hello there echo1:hello there echo2:hello there "
    assert msg.model_extra["reasoning_content"] == "think0 think1 "
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "fake-model" and resp.object == "chat.completion"
    usage = resp.usage
    assert usage.completion_tokens_details.reasoning_tokens == 2
    assert usage.completion_tokens == 5 and usage.total_tokens == usage.prompt_tokens + 5
    kv = usage.model_extra["kv_memory"]
    assert kv["compression_requested"] == 4.0 and kv["mode"] == "dms" and kv["logical_bytes"] > kv["live_bytes"]
    assert usage.model_extra["plan"]["reasons"]["tier"] == "tier 'cheap'"
    # The extras reached the engine as LLM options.
    assert server.llm.calls[-1] == {"thinking_budget": 2, "compression": 4.0, "policy_tier": "cheap",
                                    "reasoning_effort": "low"}


def test_streamed_round_trip_with_usage_chunk(server):
    stream = client(server).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, max_tokens=2, extra_body={"thinking_budget": 1},
    )
    content, reasoning, finish, usage = [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
            finish = choice.finish_reason or finish
    assert "".join(content) == "echo0:hi echo1:hi "
    assert "".join(reasoning) == "think0 "
    assert finish == "length"
    assert usage.completion_tokens_details.reasoning_tokens == 1
    assert usage.model_extra["kv_memory"]["evicted_tokens"] == 3


def test_tool_calls_in_openai_format(server):
    c = client(server)
    messages = [{"role": "user", "content": "what is the weather in Paris"}]
    resp = c.chat.completions.create(model="fake-model", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto")
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id == "call_w1"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    # Send the call and its result back: the server accepts OpenAI's tool-call history.
    follow = messages + [choice.message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    resp2 = c.chat.completions.create(model="fake-model", messages=follow, tools=[WEATHER_TOOL])
    assert resp2.choices[0].message.content.startswith("echo0:sunny")
    sent = server.llm.calls[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    stream = c.chat.completions.create(model="fake-model", messages=messages, tools=[WEATHER_TOOL], stream=True)
    calls = [tc for ch in stream for choice in ch.choices for tc in (choice.delta.tool_calls or [])]
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        (0, "get_weather", {"city": "Paris", "days": 2})]


def test_models_endpoint(server):
    models = client(server).models.list()
    (card,) = models.data
    assert card.id == "fake-model" and card.model_extra["max_context"] == 64
    assert card.model_extra["profile"]["native_compression"] == 8.0
    assert client(server).models.retrieve("fake-model").id == "fake-model"


def test_openai_client_with_api_key(keyed_server):
    from conftest import API_KEY

    ok = client(keyed_server, api_key=API_KEY).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "x"}])
    assert ok.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, api_key="wrong").chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])


def test_async_openai_client(server):
    import asyncio

    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=10)
        results = await asyncio.gather(*[
            c.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(8)])
        await c.close()
        return [r.choices[0].message.content for r in results]

    contents = asyncio.run(main())
    assert [c.split()[0] for c in contents] == [f"echo0:q{i}" for i in range(8)]


def test_langchain_openai_chat_model(server):
    lc = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed")
    llm = lc.ChatOpenAI(base_url=server.url + "/v1", api_key="x", model="fake-model", max_retries=0, timeout=10,
                        reasoning_effort="low", extra_body={"thinking_budget": 2})
    msg = llm.invoke("hello")
    assert msg.content.startswith("echo0:hello")
    assert msg.usage_metadata["output_token_details"]["reasoning"] == 2
    assert msg.response_metadata["token_usage"]["kv_memory"]["mode"] == "dms"
    assert server.llm.calls[-1]["reasoning_effort"] == "low" and server.llm.calls[-1]["thinking_budget"] == 2

    chunks = list(llm.stream("streaming please"))
    assert "".join(c.content for c in chunks).startswith("echo0:streaming please")

    ai = llm.bind_tools([WEATHER_TOOL]).invoke("weather in Paris?")
    assert ai.tool_calls == [{"name": "get_weather", "args": {"city": "Paris", "days": 2}, "id": "call_w1",
                              "type": "tool_call"}]
