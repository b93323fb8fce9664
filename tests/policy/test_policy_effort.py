"""Effort levels: reasoning_effort -> explicit budgets; budgets grow with effort."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import EXAMPLES, assert_invariants, ctx

from budgetllm.errors import InvalidRequestError
from budgetllm.policy import (
    EFFORT_LEVELS,
    EffortPolicy,
    MemoryCapPolicy,
    ModelProfile,
    PlanSettings,
    PolicyChain,
    load_policy,
)
from budgetllm.policy.fit import plan_call


def test_each_level_maps_to_its_budget():
    policy = EffortPolicy()
    budgets = [
        policy.plan(ctx(reasoning_effort=level)).thinking_budget for level in ("none", "low", "medium")
    ]
    assert budgets == [0, 1024, 4096]
    p = policy.plan(ctx(reasoning_effort="high"))
    assert p.compression == 8 and "effort 'high'" in p.reasons["thinking_budget"]


def test_default_effort_applies_without_a_request():
    p = EffortPolicy(default_effort="low").plan(ctx())
    assert p.thinking_budget == 1024
    assert "default effort" in p.reasons["thinking_budget"]


def test_the_callers_explicit_budget_beats_the_effort_level():
    p = EffortPolicy().plan(ctx(reasoning_effort="high", thinking_budget=300, compression=2))
    assert (p.thinking_budget, p.compression) == (300, 2)
    assert p.reasons["thinking_budget"] == "requested by the caller"


def test_caller_max_tokens_is_a_ceiling_and_the_answer_keeps_its_reserve():
    p = plan_call(EffortPolicy(), ctx(reasoning_effort="high", max_tokens=1000))
    assert p.max_tokens == 1000 and p.answer_reserve == 256 and p.thinking_budget == 744
    assert_invariants(p)


def test_levels_are_configurable():
    policy = EffortPolicy(levels={"low": PlanSettings(thinking_budget=512, compression=1.0)})
    assert policy.plan(ctx(reasoning_effort="low")).thinking_budget == 512
    assert policy.plan(ctx(reasoning_effort="medium")).thinking_budget == 4096  # untouched level


def test_unknown_effort_names_the_closest_level():
    with pytest.raises(InvalidRequestError, match="did you mean 'medium'"):
        EffortPolicy().plan(ctx(reasoning_effort="meduim"))


def test_a_ladder_that_goes_down_is_rejected():
    with pytest.raises(ValueError, match="must not decrease"):
        EffortPolicy(levels={"low": PlanSettings(thinking_budget=99_999)})


contexts = st.builds(
    lambda prompt, max_tokens, context: ctx(
        prompt, max_tokens=max_tokens, model=ModelProfile(kv_bytes_per_token=23040, max_context=context)
    ),
    prompt=st.integers(1, 9000),
    max_tokens=st.none() | st.integers(1, 40_000),
    context=st.integers(512, 65_536),
).filter(lambda c: c.prompt_tokens < c.model.max_context)  # longer prompts: PromptTooLongError


def _budgets(policy, context):
    """The fitted thinking budget at each effort level, lowest first, for one context."""
    return [
        plan_call(
            policy, replace(context, requested=replace(context.requested, reasoning_effort=level))
        ).thinking_budget
        or 0
        for level in EFFORT_LEVELS
    ]


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(contexts)
def test_budgets_grow_with_effort(context):
    budgets = _budgets(EffortPolicy(), context)
    assert budgets == sorted(budgets)


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(contexts, st.integers(1, 2**31))
def test_budgets_grow_with_effort_under_a_memory_cap(context, cap):
    chain = PolicyChain(EffortPolicy(), [MemoryCapPolicy(max_peak_kv_bytes=cap)])
    budgets = _budgets(chain, context)
    assert budgets == sorted(budgets)


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(contexts)
def test_budgets_grow_with_effort_in_the_example_file(context):
    budgets = _budgets(load_policy(EXAMPLES / "effort.toml"), context)
    assert budgets == sorted(budgets)
