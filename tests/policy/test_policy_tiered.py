"""Tiers, per-tool and per-agent-step overrides, and who wins (tiered.py's precedence list)."""

import pytest
from policy_helpers import assert_invariants, ctx

from budgetllm.errors import InvalidRequestError
from budgetllm.policy import PlanSettings, TieredPolicy
from budgetllm.policy.fit import plan_call

POLICY = TieredPolicy(
    defaults=PlanSettings(thinking_budget=512, compression=2, answer_reserve=128),
    tiers={
        "fast": PlanSettings(thinking_budget=0, compression=1),
        "deep": PlanSettings(effort="high", compression=4),
    },
    tools={"search": PlanSettings(thinking_budget=64)},
    steps={
        "plan": PlanSettings(thinking_budget=2048),
        "3": PlanSettings(thinking_budget=300),
        ">=5": PlanSettings(thinking_budget=100),
        ">=8": PlanSettings(thinking_budget=50),
    },
    default_tier=None,
)


def test_defaults_apply_without_tier_tool_or_step():
    p = POLICY.plan(ctx())
    assert (p.thinking_budget, p.compression, p.answer_reserve) == (512, 2, 128)
    assert p.reasons["thinking_budget"] == "file defaults"


def test_a_tier_overrides_the_defaults():
    p = POLICY.plan(ctx(tier="fast"))
    assert (p.thinking_budget, p.compression, p.answer_reserve) == (0, 1, 128)
    assert p.reasons["thinking_budget"] == "requested tier 'fast'"


def test_a_tier_naming_an_effort_expands_it_then_applies_its_own_fields():
    from dataclasses import replace

    p = POLICY.plan(ctx(tier="deep", model=replace(ctx().model, max_context=65536)))
    assert (p.thinking_budget, p.compression) == (16384, 4)
    assert "effort 'high'" in p.reasons["thinking_budget"]


def test_tool_beats_tier_and_step_beats_tool():
    assert POLICY.plan(ctx(tier="deep", tool_name="search")).thinking_budget == 64
    assert POLICY.plan(ctx(tier="deep", tool_name="search", step_name="plan")).thinking_budget == 2048


def test_steps_match_by_name_number_and_range():
    assert POLICY.plan(ctx(step=3)).thinking_budget == 300
    assert POLICY.plan(ctx(step=4)).thinking_budget == 512
    assert POLICY.plan(ctx(step=6)).thinking_budget == 100
    assert POLICY.plan(ctx(step=9)).thinking_budget == 50  # the latest range that started
    assert POLICY.plan(ctx(step=9, step_name="plan")).thinking_budget == 2048  # a name is most specific


def test_the_caller_beats_every_file_layer():
    p = POLICY.plan(ctx(tier="fast", tool_name="search", step=3, thinking_budget=777, compression=8))
    assert (p.thinking_budget, p.compression) == (777, 8)
    p = POLICY.plan(ctx(tier="fast", reasoning_effort="medium"))
    assert p.thinking_budget == 4096 and "requested by the caller" in p.reasons["thinking_budget"]


def test_unknown_tier_is_an_error_with_a_suggestion():
    with pytest.raises(InvalidRequestError, match="did you mean 'fast'"):
        POLICY.plan(ctx(tier="fsat"))


def test_width_above_one_turns_sampling_on():
    p = TieredPolicy(defaults=PlanSettings(width=4, thinking_budget=0)).plan(ctx())
    assert p.width == 4 and p.temperature and "voting" in p.reasons["temperature"]


def test_a_prompt_that_fills_the_context_leaves_a_consistent_plan():
    p = plan_call(POLICY, ctx(8000))
    assert p.max_tokens == 192 and p.answer_reserve == 128 and p.thinking_budget == 64
    assert_invariants(p)


def test_models_without_dms_still_get_compression_with_a_reason():
    from dataclasses import replace

    model = replace(ctx().model, supports_compression=False)
    p = POLICY.plan(ctx(model=model))
    assert p.compression == 2 and "sliding-window" in p.reasons["compression"]
