"""Memory cap: compression rises first, then the budget falls; a plan never exceeds a cap."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import SMOLLM, assert_invariants, ctx, plan

from budgetllm.policy import FixedPolicy, MemoryCapPolicy, ModelProfile
from budgetllm.policy.cost import plan_peak_kv_tokens

MiB = 2**20


def peak_bytes(context, p):
    return plan_peak_kv_tokens(context, p) * context.model.kv_bytes_per_token


def test_a_plan_that_fits_is_unchanged():
    context = ctx(100)
    out = MemoryCapPolicy(max_peak_kv_bytes=1024 * MiB).refine(context, plan(1024))
    assert (out.thinking_budget, out.compression) == (1024, 1.0)
    assert out.reasons["memory"].startswith("fits under")
    assert out.peak_kv_bytes == int(peak_bytes(context, out))


def test_compression_rises_before_the_budget_falls():
    context = ctx(2000)
    cap = MemoryCapPolicy(max_peak_kv_bytes=50 * MiB)  # dense 6352 tokens: 140 MiB; CR2 81; CR4 46
    out = cap.refine(context, plan(4096))
    assert out.thinking_budget == 4096
    assert out.compression == 4.0  # CR2 is not enough, CR4 is
    assert "raised from 1 to 4" in out.reasons["compression"]
    assert peak_bytes(context, out) <= 50 * MiB


def test_the_budget_falls_once_compression_is_at_its_maximum():
    context = ctx(1000)
    cap = MemoryCapPolicy(max_peak_kv_bytes=20 * MiB, max_compression=4)
    out = cap.refine(context, plan(16384))
    assert out.compression == 4 and 0 < out.thinking_budget < 16384
    assert peak_bytes(context, out) <= 20 * MiB
    # the largest budget that fits: one more token would not
    assert (
        peak_bytes(
            context, replace(out, max_tokens=out.max_tokens + 1, thinking_budget=out.thinking_budget + 1)
        )
        > 20 * MiB
    )
    assert_invariants(out)


def test_width_falls_only_when_the_minimum_budget_cannot_fit():
    context = ctx(200)
    out = MemoryCapPolicy(max_peak_kv_tokens=900, min_thinking_budget=128).refine(
        context, plan(1024, width=4)
    )
    assert out.width < 4 and peak_bytes(context, out) <= 900 * SMOLLM.kv_bytes_per_token


def test_a_cap_no_plan_can_meet_says_so():
    context = ctx(50_000, model=replace(SMOLLM, max_context=100_000))
    out = MemoryCapPolicy(max_peak_kv_bytes=1 * MiB).refine(context, plan(1024))
    assert out.reasons["memory"].startswith("cannot fit")
    assert (out.compression, out.width, out.thinking_budget) == (8.0, 1, 0)


def test_unknown_bytes_per_token_is_reported_not_guessed():
    context = ctx(100, model=ModelProfile())
    out = MemoryCapPolicy(max_peak_kv_bytes=MiB).refine(context, plan(1024))
    assert "not checked" in out.reasons["memory"] and out.peak_kv_bytes is None


def test_free_pool_memory_can_be_a_cap():
    context = ctx(100, free_kv_bytes=8 * MiB, total_kv_bytes=64 * MiB)
    out = MemoryCapPolicy(fit_free_memory=True).refine(context, plan(4096))
    assert peak_bytes(context, out) <= 8 * MiB and "free pool memory" in out.reasons["memory"]


def test_agent_kv_byte_seconds_cap_reads():
    context = ctx(100, kv_byte_seconds_left=50 * MiB)
    out = MemoryCapPolicy(decode_tokens_per_second=100).refine(context, plan(4096))
    assert out.kv_bytes_read / 100 <= 50 * MiB * 1.0001


def test_plain_limits_clamp_the_callers_request():
    policy = MemoryCapPolicy(
        max_thinking_budget=500, max_width=2, max_compression=4, max_tokens=600, base=FixedPolicy()
    )
    out = policy.plan(ctx(100, thinking_budget=5000, compression=8))
    assert out.thinking_budget <= 500 and out.compression == 4 and out.max_tokens <= 600
    assert_invariants(out)


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(
    prompt=st.integers(1, 30_000),
    budget=st.none() | st.integers(0, 40_000),
    reserve=st.integers(0, 2048),
    width=st.integers(1, 8),
    compression=st.sampled_from([1.0, 2.0, 3.0, 4.0, 8.0]),
    cap=st.integers(1, 2**33),
    per_token=st.integers(1, 200_000),
    min_budget=st.integers(0, 512),
    max_compression=st.sampled_from([1.0, 2.0, 4.0, 8.0]),
)
def test_a_plan_never_exceeds_the_cap_unless_nothing_can_fit(
    prompt, budget, reserve, width, compression, cap, per_token, min_budget, max_compression
):
    model = ModelProfile(kv_bytes_per_token=per_token, window=512, max_context=10**6)
    context = ctx(prompt, model=model)
    policy = MemoryCapPolicy(
        max_peak_kv_bytes=cap, min_thinking_budget=min_budget, max_compression=max_compression
    )
    out = policy.refine(context, plan(budget, reserve, compression, width))
    assert_invariants(out)
    assert out.compression <= max(max_compression, 1.0)
    if out.reasons["memory"].startswith("cannot fit"):
        # then not even the smallest plan fits
        floor = policy._minimum(out)
        assert peak_bytes(context, floor) > cap
    else:
        assert peak_bytes(context, out) <= cap
        assert out.peak_kv_bytes <= cap


def test_compression_below_the_allowed_levels_is_raised_to_the_smallest():
    out = MemoryCapPolicy(compressions=(4, 8)).refine(ctx(), plan(100, compression=1))
    assert out.compression == 4 and "smallest allowed level" in out.reasons["compression"]
