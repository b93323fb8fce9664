"""DMSMemoryCallbackHandler / get_dms_usage_callback aggregation, and LangChain's usage handler."""

from __future__ import annotations

import asyncio

from langchain_budgetllm import DMSMemoryCallbackHandler, get_dms_usage_callback
from langchain_core.callbacks import UsageMetadataCallbackHandler, get_usage_metadata_callback
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from lc_fakes import Scripted


def test_handler_aggregates_calls(chat_fake):
    chat = chat_fake([Scripted(output="a b c", reasoning="x y")], thinking_budget=4)
    handler = DMSMemoryCallbackHandler()
    m1 = chat.invoke("one two", config={"callbacks": [handler]}, compression=2)
    m2 = chat.invoke("three", config={"callbacks": [handler]}, compression=4)
    assert len(handler.calls) == 2
    t = handler.totals["fake-dms"]
    assert t.calls == 2
    assert t.input_tokens == m1.usage_metadata["input_tokens"] + m2.usage_metadata["input_tokens"]
    assert t.output_tokens == 10 and t.reasoning_tokens == 4
    assert t.total_tokens == t.input_tokens + t.output_tokens
    kv1, kv2 = m1.response_metadata["kv_memory"], m2.response_metadata["kv_memory"]
    assert t.logical_bytes == kv1["logical_bytes"] + kv2["logical_bytes"]
    assert t.peak_live_bytes == max(kv1["peak_live_bytes"], kv2["peak_live_bytes"])
    assert [c.compression_requested for c in handler.calls] == [2.0, 4.0]
    assert [c.thinking_budget for c in handler.calls] == [4, 4]
    assert handler.usage_metadata["fake-dms"]["total_tokens"] == t.total_tokens
    report = handler.report()
    assert "fake-dms" in report and "2 calls" in report and "compression" in report
    assert handler.to_dict()["totals"]["fake-dms"]["calls"] == 2


def test_stream_path_is_counted(chat_fake):
    chat = chat_fake([Scripted(output="a b c")])
    with get_dms_usage_callback() as cb:
        list(chat.stream("hi"))
        chat.invoke("hi")
    assert cb.totals["fake-dms"].calls == 2
    assert cb.calls[0].output_tokens == cb.calls[1].output_tokens == 3


def test_context_manager_scopes_and_resets(chat_fake):
    chat = chat_fake([Scripted(output="a")])
    with get_dms_usage_callback() as cb:
        chat.invoke("hi")
    chat.invoke("outside")
    assert len(cb.calls) == 1
    with get_dms_usage_callback() as outer:
        with get_dms_usage_callback() as inner:
            chat.invoke("hi")
        chat.invoke("hi")
    # like get_usage_metadata_callback: the innermost block's handler takes the calls made in it
    assert len(inner.calls) == 1 and len(outer.calls) == 1


async def test_async_and_concurrent_calls(chat_fake):
    chat = chat_fake([Scripted(output="a b")])
    with get_dms_usage_callback() as cb:
        await asyncio.gather(*(chat.ainvoke(f"q{i}") for i in range(5)))
        await chat.abatch(["x", "y"])
    assert cb.totals["fake-dms"].calls == 7 and cb.totals["fake-dms"].output_tokens == 14


def test_other_models_count_tokens_only():
    msg = AIMessage(
        content="hi",
        usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
        response_metadata={"model_name": "other"},
    )
    model = GenericFakeChatModel(messages=iter([msg]))
    with get_dms_usage_callback() as cb:
        model.invoke("x")
    assert cb.totals["other"].total_tokens == 5 and cb.totals["other"].peak_live_bytes == 0
    assert "no calls" not in cb.report()


def test_langchain_usage_handler_works_with_chatdms(chat_fake):
    chat = chat_fake([Scripted(output="a b c", reasoning="r")], thinking_budget=2)
    handler = UsageMetadataCallbackHandler()
    chat.invoke("hi", config={"callbacks": [handler]})
    with get_usage_metadata_callback() as cb:
        chat.invoke("hi")
        list(chat.stream("hi"))
    for usage in (handler.usage_metadata["fake-dms"], cb.usage_metadata["fake-dms"]):
        assert usage["output_token_details"]["reasoning"] >= 1
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert cb.usage_metadata["fake-dms"]["output_tokens"] == 2 * handler.usage_metadata["fake-dms"]["output_tokens"]
