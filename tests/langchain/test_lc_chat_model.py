"""ChatDMS over a scripted engine: chunks, reasoning, usage, metadata, tool calls, validation, parity."""

from __future__ import annotations

import pytest
from langchain_budgetllm import ChatDMS
from langchain_budgetllm.chat_models import convert_messages
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from lc_fakes import ADD_CALL as CALL
from lc_fakes import Scripted, add, lookup
from pydantic import ValidationError


def _merge(chunks):
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "field,value",
    [("compression", 0), ("compression", -2.0), ("thinking_budget", -1), ("max_tokens", -5), ("answer_reserve", -1),
     ("temperature", -0.1), ("top_p", 0), ("reasoning_effort", "extreme")],
)
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        ChatDMS(**{field: value})


@pytest.mark.parametrize("field,value", [("compression", 0), ("thinking_budget", -3), ("max_tokens", -1)])
def test_invalid_per_call_settings_name_the_field(chat_fake, field, value):
    chat = chat_fake()
    with pytest.raises(ValueError, match=field):
        chat.invoke("hi", **{field: value})


def test_standard_params_are_accepted_and_unknown_ones_raise():
    chat = ChatDMS(timeout=60, max_retries=2, api_key="test", stop=[])
    assert chat.api_key.get_secret_value() == "test"
    with pytest.raises(ValueError, match="unknown_param"):  # never silently dropped
        ChatDMS(unknown_param=1)


# ---------------------------------------------------------------------------------------------
# options sent to the engine


def test_only_explicit_and_per_call_options_reach_the_engine(chat_fake, fake_llm):
    chat = chat_fake(thinking_budget=16, max_tokens=40)
    chat.invoke("hi", compression=4, stop=["END"], seed=3)
    _, opts = fake_llm.calls[-1]
    assert opts == {"thinking_budget": 16, "max_tokens": 40, "compression": 4.0, "seed": 3, "stop": ["END"]}
    chat.bind(thinking_budget=0).invoke("hi")
    assert fake_llm.calls[-1][1]["thinking_budget"] == 0


def test_unset_compression_leaves_the_choice_to_the_policy(chat_fake, fake_llm):
    chat_fake().invoke("hi")
    assert "compression" not in fake_llm.calls[-1][1]


def test_messages_are_converted(chat_fake, fake_llm):
    ai = AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1"}])
    msgs = [SystemMessage("sys"), HumanMessage("1+2?"), ai, ToolMessage("3", tool_call_id="call_1")]
    assert convert_messages(msgs) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "content": "3", "tool_call_id": "call_1", "name": "add"},
    ]
    err = ToolMessage("boom", tool_call_id="call_1", status="error")
    assert convert_messages([err])[0]["content"] == "Error: boom"
    listed = HumanMessage(content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    assert convert_messages([listed])[0]["content"] == "ab"


# ---------------------------------------------------------------------------------------------
# stream structure


def test_stream_reasoning_text_and_last_chunk(chat_fake):
    chat = chat_fake([Scripted(output="Four.", reasoning="2+2 is 4")], thinking_budget=8)
    chunks = list(chat.stream("2+2?"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    # metadata and usage only on the last chunk
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    assert [c for c in chunks if c.response_metadata.get("model_name")] == [chunks[-1]]
    full = _merge(chunks)
    assert full.content == "Four."
    assert full.additional_kwargs["reasoning_content"] == "2+2 is 4"
    assert "2+2 is 4" not in full.content
    u = full.usage_metadata
    assert u["output_token_details"]["reasoning"] == 3
    assert u["output_tokens"] >= u["output_token_details"]["reasoning"]
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    meta = full.response_metadata
    assert meta["model_name"] == "fake-dms" and meta["model_provider"] == "dms" and meta["finish_reason"] == "stop"
    assert set(meta["kv_memory"]) >= {
        "logical_bytes", "live_bytes", "reserved_bytes", "peak_live_bytes", "compression_requested",
        "compression_achieved", "evicted_tokens", "kv_bytes_read"}
    assert meta["budget_plan"]["thinking_budget"] == 8


def test_invoke_v1_has_reasoning_block(chat_fake):
    chat = chat_fake([Scripted(output="Four.", reasoning="think")], output_version="v1")
    msg = chat.invoke("2+2?")
    assert [b["type"] for b in msg.content_blocks] == ["reasoning", "text"]
    assert msg.content_blocks[0]["reasoning"] == "think"


def test_stream_v1_blocks_have_one_running_index(chat_fake):
    out = "Let me add.\n" + CALL + '\n<tool_call>\n{"name": "lookup", "arguments": {"key": "x"}}\n</tool_call>'
    chat = chat_fake([Scripted(output=out, reasoning="need tools")], output_version="v1").bind_tools([add, lookup])
    chunks = list(chat.stream("3+4?"))
    seen = []
    for c in chunks:
        for b in c.content:
            if (b["type"], b["index"]) not in seen:
                seen.append((b["type"], b["index"]))
    assert seen == [("reasoning", 0), ("text", 1), ("tool_call_chunk", 2), ("tool_call_chunk", 3)]
    full = _merge(chunks)
    assert [b["type"] for b in full.content] == ["reasoning", "text", "tool_call", "tool_call"]
    assert [tc["name"] for tc in full.tool_calls] == ["add", "lookup"]
    assert [tc["args"] for tc in full.tool_calls] == [{"a": 3, "b": 4}, {"key": "x"}]


def test_tool_calls_stream_and_invoke(chat_fake):
    chat = chat_fake([Scripted(output="Let me add.\n" + CALL)]).bind_tools([add])
    full = _merge(list(chat.stream("3+4?")))
    assert full.content == "Let me add."
    assert full.tool_calls[0]["name"] == "add" and full.tool_calls[0]["args"] == {"a": 3, "b": 4}
    assert full.tool_calls[0]["id"].startswith("call_")
    assert full.response_metadata["finish_reason"] == "tool_calls"
    msg = chat.invoke("3+4?")
    assert msg.tool_calls[0]["args"] == {"a": 3, "b": 4} and msg.tool_calls[0]["type"] == "tool_call"
    assert any(b["type"] == "tool_call" for b in msg.content_blocks)


def test_tools_and_tool_choice_reach_the_engine(chat_fake, fake_llm):
    chat_fake().bind_tools([add], tool_choice="any").invoke("3+4?")
    opts = fake_llm.calls[-1][1]
    # LangChain's "any" / a tool name travel in the OpenAI shape both engines (local, HTTP) take
    assert opts["tools"][0]["function"]["name"] == "add" and opts["tool_choice"] == "required"
    chat_fake().bind_tools([add], tool_choice="add").invoke("3+4?")
    assert fake_llm.calls[-1][1]["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    chat_fake().bind_tools([add], tool_choice="none").invoke("3+4?")
    assert "tools" not in fake_llm.calls[-1][1]


@pytest.mark.parametrize(
    "output,error",
    [
        ('<tool_call>\n{"name": "add", "arguments": {"a": 3,', "truncated"),
        ('<tool_call>\n{"name": "add", "arguments": {a: 3}}\n</tool_call>', "JSON"),
    ],
)
def test_malformed_calls_become_invalid_tool_calls_with_ids(chat_fake, output, error):
    chat = chat_fake([Scripted(output=output, finish="length")]).bind_tools([add])
    msg = chat.invoke("3+4?")
    assert msg.tool_calls == []
    (bad,) = msg.invalid_tool_calls
    assert bad["id"].startswith("call_") and bad["name"] == "add" and error in bad["error"]
    full = _merge(list(chat.stream("3+4?")))  # streamed: still invalid, still with an id
    assert full.tool_calls == [] and full.invalid_tool_calls[0]["id"].startswith("call_")


def test_tool_markup_never_reaches_content(chat_fake):
    chat = chat_fake([Scripted(output=CALL)]).bind_tools([add])
    for c in chat.stream("3+4?"):
        assert "<tool" not in c.content


def test_early_close_cancels_the_request(chat_fake, fake_llm):
    chat = chat_fake([Scripted(output="one two three four five six seven eight")])
    it = chat.stream("count")
    next(it)
    it.close()
    assert fake_llm.closed == 1


# ---------------------------------------------------------------------------------------------
# sync / async, stream / invoke parity


async def test_sync_async_stream_invoke_parity(chat_fake):
    script = [Scripted(output="Let me add.\n" + CALL, reasoning="adding")]
    chat = chat_fake(script).bind_tools([add])

    def key(m):
        calls = [(tc["name"], tc["args"]) for tc in m.tool_calls]
        u = m.usage_metadata
        return (m.content, m.additional_kwargs.get("reasoning_content"), calls, u["input_tokens"], u["output_tokens"],
                m.response_metadata["finish_reason"], m.response_metadata["kv_memory"])

    results = [
        chat.invoke("3+4?"),
        await chat.ainvoke("3+4?"),
        _merge(list(chat.stream("3+4?"))),
        _merge([c async for c in chat.astream("3+4?")]),
        chat.batch(["3+4?"])[0],
        (await chat.abatch(["3+4?"]))[0],
    ]
    assert len({repr(key(r)) for r in results}) == 1


def test_num_tokens_uses_the_engine(chat_fake, fake_llm):
    chat = chat_fake()
    n = chat.get_num_tokens_from_messages([HumanMessage("a b c")], tools=[add])
    assert n == fake_llm.count_tokens([{"role": "user", "content": "a b c"}], tools=[1])


def test_profile_reads_context_lazily(chat_fake):
    chat = chat_fake()
    assert chat.profile.get("max_input_tokens") == 2048
    assert chat.profile["reasoning_output"] and chat.profile["tool_calling"]


def test_ls_params():
    params = ChatDMS(model="m", temperature=0, max_tokens=9, stop=["x"])._get_ls_params()
    assert params == {"ls_provider": "dms", "ls_model_name": "m", "ls_model_type": "chat", "ls_temperature": 0.0,
                      "ls_max_tokens": 9, "ls_stop": ["x"]}


def test_with_structured_output_binds_tool_and_parses(chat_fake):
    from pydantic import BaseModel

    class Sum(BaseModel):
        """The sum."""

        total: int

    out = '<tool_call>\n{"name": "Sum", "arguments": {"total": 7}}\n</tool_call>'
    chat = chat_fake([Scripted(output=out)])
    assert chat.with_structured_output(Sum, method="function_calling").invoke("3+4?") == Sum(total=7)


def test_with_structured_output_json_schema_sends_the_schema(chat_fake, fake_llm):
    from pydantic import BaseModel

    class Sum(BaseModel):
        """The sum."""

        total: int

    chat = chat_fake([Scripted(output='{"total": 7}'), Scripted(output="not json")])
    assert chat.with_structured_output(Sum).invoke("3+4?") == Sum(total=7)
    rf = fake_llm.calls[-1][1]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"]["properties"]["total"]["type"] == "integer"
    raw = chat.with_structured_output(Sum, include_raw=True).invoke("3+4?")
    assert raw["parsed"] is None and raw["parsing_error"] is not None and raw["raw"].content == "not json"
    with pytest.raises(ValueError, match="method"):
        chat.with_structured_output(Sum, method="xml")


def test_base_url_uses_one_shared_remote_client(monkeypatch):
    from lc_fakes import FakeLLM

    import budgetllm

    made = []

    class FakeRemote(FakeLLM):
        def __init__(self, base_url, api_key=None, timeout=None, max_retries=None):
            super().__init__(script=[Scripted(output="remote hello")], model_name="remote-model")
            made.append((base_url, api_key, timeout))

    monkeypatch.setattr(budgetllm, "RemoteLLM", FakeRemote)
    a = ChatDMS(base_url="http://h:1/v1", api_key="k", timeout=5)
    b = ChatDMS(base_url="http://h:1/v1", api_key="k", timeout=5, compression=2)
    assert a.invoke("hi").content == "remote hello"
    msg = b.invoke("hi")
    assert made == [("http://h:1/v1", "k", 5)]  # one client for both instances
    assert msg.response_metadata["model_name"] == "remote-model"
    assert msg.response_metadata["kv_memory"]["compression_requested"] == 2.0


def test_remote_and_local_paths_return_the_same_messages():
    """ChatDMS over budgetllm's server client gives what it gives over the engine itself."""
    pytest.importorskip("fastapi")
    from lc_fakes import FakeLLM
    from starlette.testclient import TestClient

    from budgetllm import RemoteLLM
    from budgetllm.server.app import create_app

    fake = FakeLLM(script=[Scripted(output="Let me add.\n" + CALL, reasoning="adding it up")])
    remote = RemoteLLM("http://testserver")
    remote._client = TestClient(create_app(fake), base_url="http://testserver")

    def key(m):
        u = m.usage_metadata
        return (m.content, m.additional_kwargs.get("reasoning_content"), [(c["name"], c["args"]) for c in m.tool_calls],
                u["input_tokens"], u["output_tokens"], u["output_token_details"], m.response_metadata["model_name"],
                m.response_metadata["finish_reason"], m.response_metadata["kv_memory"]["compression_requested"])

    results = []
    for llm in (fake, remote):
        chat = ChatDMS.from_llm(llm, thinking_budget=8).bind_tools([add])
        results += [chat.invoke("3+4?", compression=2), _merge(list(chat.stream("3+4?", compression=2)))]
    assert len({repr(key(m)) for m in results}) == 1, [key(m) for m in results]
    assert results[0].tool_calls[0]["args"] == {"a": 3, "b": 4}
