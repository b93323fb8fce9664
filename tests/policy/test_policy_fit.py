"""The one budget fit (budgetllm.policy.fit): each rule, and properties over random calls."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import SMOLLM, assert_invariants, ctx, plan

from budgetllm.errors import InvalidRequestError, PromptTooLongError
from budgetllm.policy import (
    AgentBudget,
    EffortPolicy,
    EscalationPolicy,
    FixedPolicy,
    MemoryCapPolicy,
    PolicyChain,
    escalate_call,
    fit_plan,
    plan_call,
)
from budgetllm.policy.cost import plan_peak_kv_tokens
from budgetllm.policy.fit import PlannedPolicy, check_fitted

THINKING = replace(SMOLLM, thinking_open_tokens=2, thinking_close_tokens=3)


def test_a_plan_that_fits_is_unchanged_apart_from_its_estimates():
    p = plan(1024, 256)
    out = fit_plan(ctx(100), p)
    assert (out.thinking_budget, out.answer_reserve, out.max_tokens) == (1024, 256, 1280)
    assert out.reasons == p.reasons and out.peak_kv_bytes is not None


def test_the_callers_max_tokens_is_a_ceiling_and_a_policy_budget_gives_way():
    out = plan_call(EffortPolicy(), ctx(reasoning_effort="high", max_tokens=1000))
    assert (out.max_tokens, out.answer_reserve, out.thinking_budget) == (1000, 256, 744)
    assert "lowered from 16384 to 744" in out.reasons["thinking_budget"]
    assert out.reasons["max_tokens"] == "requested by the caller"  # never raised past it, so never lowered


def test_a_default_reserve_never_starves_the_callers_budget():
    out = plan_call(FixedPolicy(), ctx(thinking_budget=5, max_tokens=40))
    assert (out.thinking_budget, out.answer_reserve, out.max_tokens) == (5, 35, 40)
    assert "shrunk from 40 to 35" in out.reasons["answer_reserve"]
    # ... down to a quarter of max_tokens: then the budget gives way
    out = plan_call(FixedPolicy(), ctx(thinking_budget=200, max_tokens=40))
    assert (out.thinking_budget, out.answer_reserve) == (30, 10)


def test_the_callers_reserve_is_kept_and_the_budget_gives_way():
    out = plan_call(FixedPolicy(), ctx(thinking_budget=25, max_tokens=30, answer_reserve=10))
    assert (out.thinking_budget, out.answer_reserve, out.max_tokens) == (20, 10, 30)
    assert out.reasons["answer_reserve"] == "requested by the caller"
    # a reserve larger than max_tokens is cut to it (it never raises max_tokens)
    out = plan_call(FixedPolicy(), ctx(thinking_budget=64, answer_reserve=1000, max_tokens=300))
    assert (out.answer_reserve, out.thinking_budget, out.max_tokens) == (300, 0, 300)


def test_a_budget_from_a_policy_raises_its_default_max_tokens():
    out = plan_call(FixedPolicy(thinking_budget=4096), ctx(100))
    assert (out.thinking_budget, out.max_tokens) == (4096, 4096 + 256)
    assert "raised from 512" in out.reasons["max_tokens"]


def test_the_context_and_the_open_tag_are_ceilings():
    context = ctx(8000, model=THINKING)  # 192 tokens left, 2 of them for the open tag
    out = plan_call(FixedPolicy(thinking_budget=1000, answer_reserve=64), context)
    assert out.max_tokens == 190 and out.thinking_budget == 126 and out.answer_reserve == 64
    assert "context holds 8192" in out.reasons["max_tokens"]
    check_fitted(out, 8000 + 2, 8192)
    # without thinking no tag is appended: the whole room is there
    assert plan_call(FixedPolicy(answer_reserve=64), context).max_tokens == 192
    # a prompt that already opens the block needs no tag either
    assert (
        plan_call(
            FixedPolicy(thinking_budget=1000, answer_reserve=64), replace(context, thinking_open=True)
        ).max_tokens
        == 192
    )


def test_a_prompt_that_fills_the_context_is_an_error():
    with pytest.raises(PromptTooLongError, match="context holds 8192"):
        plan_call(FixedPolicy(), ctx(8192))
    out = plan_call(FixedPolicy(), ctx(8191))  # one token of room: a consistent plan of one token
    assert (out.max_tokens, out.answer_reserve) == (1, 1)


def test_the_agents_tokens_left_are_a_ceiling():
    out = plan_call(FixedPolicy(max_tokens=100), ctx(tokens_left=15))
    assert out.max_tokens == 15 and "the agent's tokens left" in out.reasons["max_tokens"]


def test_a_spent_agent_budget_turns_thinking_off_and_caps_the_call():
    agent = AgentBudget(calls_left=0, max_tokens_when_spent=16)
    out = plan_call(FixedPolicy(thinking_budget=32, max_tokens=64), replace(ctx(), agent=agent))
    assert (out.thinking_budget, out.max_tokens) == (0, 16)
    assert "call budget is spent" in out.reasons["thinking_budget"]
    # without max_tokens_when_spent only tokens_left caps a call (a direct caller's agent budget)
    out = plan_call(FixedPolicy(thinking_budget=32, max_tokens=64), ctx(calls_left=0))
    assert out.thinking_budget == 32


def test_a_budget_too_small_to_close_turns_thinking_off():
    out = plan_call(FixedPolicy(), ctx(model=THINKING, thinking_budget=2))
    assert out.thinking_budget == 0 and "close of a thinking block" in out.reasons["thinking_budget"]
    assert plan_call(FixedPolicy(), ctx(model=THINKING, thinking_budget=3)).thinking_budget == 3


def test_an_opened_block_without_a_budget_gets_what_max_tokens_leaves():
    out = plan_call(FixedPolicy(max_tokens=300, answer_reserve=100), ctx(thinking_open=True))
    assert out.thinking_budget == 200 and "opens a thinking block" in out.reasons["thinking_budget"]
    assert plan_call(FixedPolicy(max_tokens=300, answer_reserve=100), ctx()).thinking_budget is None


def test_a_policy_compression_that_is_not_positive_is_a_request_error():
    class Broken:
        def plan(self, context):
            return replace(plan(), compression=0.0)

    with pytest.raises(InvalidRequestError, match="the policy chose 0.0"):
        plan_call(Broken(), ctx())


def test_a_memory_capped_chain_is_not_changed_by_the_final_fit():
    chain = PolicyChain(EffortPolicy(), [MemoryCapPolicy(max_peak_kv_bytes=20 * 2**20)])
    context = ctx(1000, reasoning_effort="xhigh", max_tokens=9000, tokens_left=5000)
    proposal = chain.plan(context)
    out = plan_call(chain, context)
    assert out == proposal  # the cap fitted early with the same fit; nothing after it refits
    assert (
        out.max_tokens <= 5000 and plan_peak_kv_tokens(context, out) * SMOLLM.kv_bytes_per_token <= 20 * 2**20
    )


def test_escalation_is_fitted_and_stops_when_the_fit_undoes_it():
    policy = EscalationPolicy(base=FixedPolicy(thinking_budget=256, compression=2.0))
    context = ctx(100)
    first = plan_call(policy, context)
    retry = escalate_call(policy, context, first, 1)
    assert (retry.thinking_budget, retry.compression) == (512, 4.0)
    assert_invariants(retry)
    # the caller's max_tokens holds the first call at its ceiling: doubling the budget changes nothing
    tight = ctx(100, max_tokens=300, answer_reserve=44)
    first = plan_call(FixedPolicy(thinking_budget=256, compression=8.0), tight)
    assert escalate_call(EscalationPolicy(base=FixedPolicy(), max_compression=8.0), tight, first, 1) is None
    assert escalate_call(FixedPolicy(), context, first, 1) is None  # no escalate: no retry


def test_a_planned_policy_replays_a_fitted_plan():
    fitted = plan_call(EffortPolicy(), ctx(reasoning_effort="low", max_tokens=700))
    assert plan_call(PlannedPolicy(fitted), ctx(reasoning_effort="low", max_tokens=700)) == fitted


requests = st.fixed_dictionaries(
    {},
    optional={
        "thinking_budget": st.integers(0, 20_000),
        "max_tokens": st.integers(0, 20_000),
        "answer_reserve": st.integers(0, 3000),
        "tokens_left": st.integers(-50, 20_000),
        "calls_left": st.integers(0, 2),
        "thinking_open": st.booleans(),
    },
)


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(
    prompt=st.integers(1, 8191),
    proposal=st.builds(
        plan,
        st.none() | st.integers(0, 40_000),
        st.integers(0, 3000),
        st.sampled_from([1.0, 2.0, 8.0]),
        st.integers(1, 4),
        st.integers(0, 50_000),
    ),
    request=requests,
    when_spent=st.none() | st.integers(1, 64),
    tags=st.tuples(st.integers(0, 4), st.integers(0, 8)),
)
def test_the_fit_holds_every_ceiling_and_is_idempotent(prompt, proposal, request, when_spent, tags):
    model = replace(SMOLLM, thinking_open_tokens=tags[0], thinking_close_tokens=tags[1])
    context = ctx(prompt, model=model, **request)
    context = replace(context, agent=replace(context.agent, max_tokens_when_spent=when_spent))
    try:
        out = fit_plan(context, proposal)
    except PromptTooLongError:
        assert prompt + tags[0] >= model.max_context  # no room for one token (after the open tag)
        return
    assert fit_plan(context, out) == out  # fitting twice changes nothing: the engine only checks
    assert_invariants(out)
    opens = bool(out.thinking_budget) and not context.thinking_open
    check_fitted(out, prompt + (tags[0] if opens else 0), model.max_context)
    if "max_tokens" in request:
        assert out.max_tokens <= request["max_tokens"]
    if "tokens_left" in request:
        assert out.max_tokens <= max(request["tokens_left"], 0)
    if "answer_reserve" in request:
        assert out.answer_reserve == min(request["answer_reserve"], out.max_tokens)
    if out.thinking_budget:
        assert out.thinking_budget >= tags[1]  # the close tag fits
    if when_spent is not None and context.agent.spent():
        assert not out.thinking_budget and out.max_tokens <= when_spent
    assert (out.compression, out.width) == (proposal.compression, proposal.width)


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(
    prompt=st.integers(1, 8000),
    effort=st.sampled_from(["none", "low", "high", "xhigh"]),
    request=requests,
    cap=st.integers(1, 2**31),
    min_budget=st.integers(0, 512),
)
def test_the_memory_cap_fits_early_and_the_final_fit_changes_nothing(prompt, effort, request, cap, min_budget):
    chain = PolicyChain(EffortPolicy(), [MemoryCapPolicy(max_peak_kv_bytes=cap, min_thinking_budget=min_budget)])
    context = ctx(prompt, reasoning_effort=effort, **request)
    try:
        proposal = chain.plan(context)
    except PromptTooLongError:
        return
    assert plan_call(chain, context) == proposal
