"""The Python API under misuse: every bad argument is an InvalidRequestError naming the field (never a
raw TypeError/KeyError/RuntimeError), and an LLM can be closed and its shared engines released."""

from __future__ import annotations

import threading

import pytest

import budgetllm
from budgetllm import LLM, BudgetLLMError, InvalidRequestError

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm("qwen3")


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
        ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"), ({"seed": 2**64}, "seed"),
        ({"stop": 5}, "stop"), ({"tools": "abc"}, "tools"), ({"policy": "x.yaml"}, "policy"),
        ({"policy_tier": "fast"}, "policy_tier"), ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "nope", "tools": [TOOL]}, "tool_choice"), ({"compression": 0.5}, "compression"),
    ],
)
def test_bad_options(llm, opts, field):
    with pytest.raises(InvalidRequestError) as e:
        llm.generate("hi", max_tokens=2, **opts)
    assert e.value.field == field


@pytest.mark.parametrize(
    ("messages", "field"),
    [(["hi"], "messages[0]"), ([{"content": "x"}], "messages[0].role"), ([], "messages"), (5, "messages"),
     ([{"role": "user", "content": 5}], "messages[0].content"), ([{"role": "user", "tool_calls": "x"}],
                                                                 "messages[0].tool_calls")],
)
def test_bad_messages(llm, messages, field):
    with pytest.raises(InvalidRequestError) as e:
        llm.generate(messages, max_tokens=2)
    assert e.value.field == field
    with pytest.raises(InvalidRequestError):
        llm.count_tokens(messages)


def test_truncated_tool_call_arguments_in_an_earlier_turn(llm):
    """Agents send back calls the model cut short; the conversation must still render."""
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Par'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    out = llm.generate(messages, tools=[TOOL], max_tokens=2)
    assert out.usage.output_tokens == 2


def test_policy_tier_with_a_tiered_policy_is_accepted(llm, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("tiers:\n  fast:\n    compression: 1\n")
    policy = budgetllm.load_policy(path)
    out = llm.generate("hi", max_tokens=2, policy=policy, policy_tier="fast")
    assert out.usage.plan.compression == 1.0


def test_close_and_context_manager(tiny_dir):
    path = str(tiny_dir("llama"))
    with LLM.from_pretrained(path, backend="reference", device="cpu", progress=False) as a:
        assert a.generate("hi", max_tokens=2).usage.output_tokens == 2
    for call in (lambda: a.generate("hi"), lambda: list(a.stream("hi")), a.pool_stats,
                 lambda: a.max_context):
        with pytest.raises(BudgetLLMError, match="closed"):
            call()
    a.close()  # idempotent
    assert a.closed and a.backend is None and a.loaded is None


def test_release_shared_engines(tiny_dir):
    path = str(tiny_dir("llama"))
    first = budgetllm.get_llm(path, backend="reference", device="cpu", progress=False)
    assert budgetllm.get_llm(path, backend="reference", device="cpu") is first
    assert budgetllm.release_llm(path, backend="reference", device="cpu") is True
    assert budgetllm.release_llm(path, backend="reference", device="cpu") is False
    with pytest.raises(BudgetLLMError):
        first.generate("hi")
    again = budgetllm.get_llm(path, backend="reference", device="cpu", progress=False)
    assert again is not first and again.generate("hi", max_tokens=1).usage.output_tokens == 1
    assert budgetllm.release_all() >= 1
    with pytest.raises(BudgetLLMError):
        again.generate("hi")


def test_paged_close_stops_the_thread_and_fails_waiting_requests(tiny_dir):
    from budgetllm.engine.paged.backend import PagedBackend

    ref = LLM.from_pretrained(str(tiny_dir("llama")), backend="reference", device="cpu", progress=False)
    backend = PagedBackend(ref.loaded, max_seqs=2, page_size=4, num_pages=120, cuda_graphs=False, max_context=128)
    paged = LLM(ref.loaded, backend)
    assert paged.generate("hi", max_tokens=3).usage.output_tokens == 3
    thread = backend._thread
    running = paged.stream("hi", max_tokens=80)
    next(running)  # a request in flight when the engine closes gets an error, not a hang
    closer = threading.Thread(target=paged.close)
    closer.start()
    with pytest.raises(BudgetLLMError, match="closed"):
        for _ in running:
            pass
    closer.join(timeout=30)
    assert not thread.is_alive() and backend.runner is None
    assert not [t for t in threading.enumerate() if t is thread]
    with pytest.raises(BudgetLLMError):
        paged.generate("hi")
    assert ref.generate("hi", max_tokens=2).usage.output_tokens == 2  # the shared weights are untouched


async def test_closing_astream_during_the_prefill_cancels_the_request_at_once(tiny_llm, monkeypatch):
    """The defect: a client that left during the prefill was noticed only after the first token."""
    import asyncio

    llm = tiny_llm("llama")
    entered, release, seen = threading.Event(), threading.Event(), []
    original = llm.backend.run

    def slow_prefill(req):
        seen.append(req)
        entered.set()
        release.wait(30)  # the engine is busy with this request's prefill
        yield from original(req)

    monkeypatch.setattr(llm.backend, "run", slow_prefill)
    stream = llm.astream("hi", max_tokens=50)
    first = asyncio.ensure_future(anext(stream))
    assert await asyncio.to_thread(entered.wait, 30)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await stream.aclose()
    try:
        assert seen[0].cancelled  # set while the prefill still runs, not after it
    finally:
        release.set()


def test_close_calls_the_backends_close_which_the_protocol_requires(tiny_dir):
    """``close`` is part of the Backend protocol (every backend has it: test_architecture), so
    LLM.close() calls it and never skips a backend without one."""
    llm = LLM.from_pretrained(str(tiny_dir("llama")), backend="reference", device="cpu", progress=False)
    real, llm.backend = llm.backend, type("NoClose", (), {"name": "no-close"})()  # not a Backend
    with pytest.raises(AttributeError, match="close"):
        llm.close()  # a silent skip would leak the engine's memory and threads
    real.close()
