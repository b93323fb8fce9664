"""The public LLM API on tiny random models: budgets, reserves, sampling, streaming, errors."""

from __future__ import annotations

import pytest

from budgetllm import InvalidRequestError, PromptTooLongError
from budgetllm.engine.thinking import ThinkingController


@pytest.mark.parametrize("budget,max_tokens,reserve", [(12, 30, 10), (25, 30, 10), (5, 40, None), (200, 40, 8)])
def test_thinking_budget_never_exceeded_and_reserve_holds(tiny_llm, budget, max_tokens, reserve):
    llm = tiny_llm("qwen3", "borrowed")
    out = llm.generate("Solve: 3+4*2", thinking_budget=budget, max_tokens=max_tokens, answer_reserve=reserve,
                       compression=8, temperature=0.8, seed=7)
    u = out.usage
    assert u.reasoning_tokens <= budget
    assert u.output_tokens <= max_tokens
    answer_tokens = u.output_tokens - u.reasoning_tokens
    if reserve is not None and out.finish_reason == "length":
        assert answer_tokens >= min(reserve, max_tokens)  # the answer kept its reserve
    plan = u.plan  # the one fitted plan: what the engine enforced, and what it reports
    assert plan.thinking_budget == min(budget, max_tokens - plan.answer_reserve)
    assert u.reasoning_tokens <= plan.thinking_budget
    assert plan.thinking_budget + plan.answer_reserve <= plan.max_tokens <= max_tokens
    if plan.thinking_budget < budget:
        assert "lowered from" in plan.reasons["thinking_budget"]
    if reserve is None:  # a default reserve never starves the budget the caller asked for
        assert plan.thinking_budget == budget and "shrunk" in plan.reasons["answer_reserve"]
    if u.forced_close:
        assert "</think>" not in out.text  # the block is closed and never reopened in the answer


def test_controller_counts_forced_tokens_as_reasoning():
    enc = lambda s: list(range(len(s.split())))  # noqa: E731 - one token per word
    c = ThinkingController(budget=10, answer_reserve=5, max_tokens=30, encode=enc)
    assert c.phase == "thinking"
    produced = 0
    while c.thinking:
        forced = c.next_forced()
        c.observe(forced if forced is not None else 99)
        produced += 1
    assert produced == c.reasoning_tokens <= 10 and c.forced_close
    assert c.answer_budget_left() >= 5


def test_seeded_sampling_is_reproducible_and_stream_matches_generate(tiny_llm):
    llm = tiny_llm("llama")
    kw = dict(max_tokens=15, temperature=0.9, top_p=0.9, top_k=50, seed=11, compression=1)
    a = llm.generate("hello", **kw)
    b = llm.generate("hello", **kw)
    assert a.token_ids == b.token_ids
    events = list(llm.stream("hello", **kw))
    assert events[-1].kind == "done"
    assert "".join(e.text for e in events if e.kind == "text") == a.text
    assert events[-1].generation.token_ids == a.token_ids


def test_stop_string_cuts_the_answer(tiny_llm):
    llm = tiny_llm("llama")
    full = llm.generate("count", max_tokens=20, compression=1)
    assert len(full.text) > 6
    stop = full.text[3:6]
    out = llm.generate("count", max_tokens=20, compression=1, stop=[stop])
    assert out.finish_reason == "stop" and out.text == full.text[: full.text.find(stop)]


def test_window_mode_on_a_model_without_dms(tiny_llm):
    llm = tiny_llm("llama")
    out = llm.generate("word " * 300, max_tokens=4, compression=8)
    assert out.usage.kv.mode == "window"
    assert out.usage.kv.compression_achieved > 2.0
    assert out.usage.kv.live_bytes < out.usage.kv.logical_bytes
    assert out.usage.kv.peak_live_bytes >= out.usage.kv.live_bytes


def test_accounting_bytes_are_consistent(tiny_llm):
    llm = tiny_llm("qwen3", "borrowed")
    out = llm.generate("word " * 100, max_tokens=10, compression=8)
    kv, shape = out.usage.kv, llm.kv_shape
    total = out.usage.input_tokens + out.usage.output_tokens - 1  # the last token is never fed back
    assert kv.logical_bytes == total * shape.token_bytes
    assert kv.evicted_tokens == (kv.logical_bytes - kv.live_bytes) // shape.entry_bytes
    assert kv.compression_achieved == pytest.approx(kv.logical_bytes / kv.live_bytes, rel=1e-3)
    assert kv.kv_bytes_read > 0 and kv.mode == "dms"


@pytest.mark.parametrize("opts,field", [
    ({"thinking_budget": -1}, "thinking_budget"),
    ({"compression": 0}, "compression"),
    ({"compression": -2.5}, "compression"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_bad_options_name_the_field(tiny_llm, opts, field):
    with pytest.raises(InvalidRequestError) as e:
        tiny_llm("llama").generate("hi", **opts)
    assert e.value.field == field and field in str(e.value)


def test_prompt_longer_than_context(tiny_llm):
    llm = tiny_llm("llama")
    with pytest.raises(PromptTooLongError, match="context holds 2048"):
        llm.generate("word " * 3000, max_tokens=4)


def test_constructor_rejects_bad_compression(tiny_dir):
    from budgetllm import LLM

    with pytest.raises(InvalidRequestError, match="compression"):
        LLM.from_pretrained(str(tiny_dir("llama")), compression=0, device="cpu")
    with pytest.raises(InvalidRequestError, match="unknown backend"):
        LLM.from_pretrained(str(tiny_dir("llama")), backend="magic", device="cpu", progress=False)


def test_usage_sink_sees_every_call(tiny_llm):
    from budgetllm import UsageLog

    llm = tiny_llm("qwen2")
    log = UsageLog()
    llm.add_usage_sink(log)
    llm.generate("a", max_tokens=3)
    llm.generate("b", max_tokens=3)
    assert log.totals()["calls"] == 2 and log.totals()["output_tokens"] == 6
    llm._sinks.remove(log)


def test_closing_the_stream_cancels(tiny_llm):
    llm = tiny_llm("llama")
    it = llm.stream("hello", max_tokens=50, compression=1)
    next(it)
    it.close()
    assert llm.backend.active == 0


def test_fallback_threshold_calibrates_on_the_prompt(tiny_llm):
    """No threshold table and a ratio other than the native one: the prompt's own logits set it."""
    import random

    llm = tiny_llm("qwen3", "borrowed")
    rng = random.Random(0)
    prompt = " ".join(rng.choice(["cat", "dog", "tree", "blue", "run", "seven", "house", "light"]) for _ in range(240))
    ratios = {}
    for cr in (2, 4):
        out = llm.generate(prompt, compression=cr, max_tokens=2)
        assert out.usage.kv.mode == "dms"
        ratios[cr] = out.usage.kv.compression_achieved
    # The window (8 tokens here) is never evicted, so the ratio lands a little under the target.
    assert 1.6 < ratios[2] <= 2.2 and 2.8 < ratios[4] <= 4.4


def test_tool_choice_forces_a_call_of_that_tool(tiny_llm):
    llm = tiny_llm("qwen2")
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two integers",
              "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
    # the grammar writes the whole call (name and schema-valid arguments), so it needs room for it
    out = llm.generate("add 3 and 4", tools=tools, tool_choice="add", max_tokens=60)
    assert out.finish_reason == "tool_calls" and not out.invalid_tool_calls
    assert [c.name for c in out.tool_calls] == ["add"] and isinstance(out.tool_calls[0].arguments.get("a", 0), int)
    free = llm.generate("add 3 and 4", tools=tools, max_tokens=12)
    assert not free.tool_calls  # a random model does not call tools by itself


def test_an_empty_answer_runs_the_fitted_escalated_plan(tiny_llm):
    """A retry runs the policy's escalated plan, fitted once: the policy plans the first call only."""
    from budgetllm.policy import EscalationPolicy, FixedPolicy

    planned = []

    class Counting(EscalationPolicy):
        def plan(self, context):
            planned.append(context)
            return super().plan(context)

    llm = tiny_llm("llama")
    full = llm.generate("count", max_tokens=20, compression=1)
    stop = full.text.lstrip()[:1]
    assert stop  # the random model writes something: cutting at its first character empties the answer
    out = llm.generate("count", policy=Counting(base=FixedPolicy(compression=2.0, max_tokens=20)), stop=[stop])
    assert len(planned) == 1 and planned[0].prompt_tokens == out.usage.input_tokens
    plan = out.usage.plan
    assert plan.escalation_attempt in (2, 3) and plan.compression == 4.0
    assert "escalation 1/2" in plan.reasons["compression"]
    if plan.escalation_attempt == 3:
        assert (plan.thinking_budget, plan.width) == (0, 4)
