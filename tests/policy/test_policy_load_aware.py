"""Load-aware: stronger compression when the KV pool is nearly full, so more users fit."""

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import ctx, plan

from budgetllm.policy import LoadAwarePolicy, LoadBand

GiB = 2**30


def test_a_quiet_pool_changes_nothing():
    out = LoadAwarePolicy().refine(
        ctx(free_kv_bytes=3 * GiB, total_kv_bytes=4 * GiB), plan(1024, compression=1)
    )
    assert out.compression == 1 and "no change" in out.reasons["load"]


def test_a_busy_pool_raises_compression():
    out = LoadAwarePolicy().refine(
        ctx(free_kv_bytes=1 * GiB, total_kv_bytes=4 * GiB), plan(1024, compression=1)
    )
    assert out.compression == 4 and "25% free" in out.reasons["compression"]


def test_the_most_severe_band_wins():
    out = LoadAwarePolicy().refine(ctx(free_kv_bytes=GiB // 10, total_kv_bytes=4 * GiB), plan(1024, width=4))
    assert out.compression == 8 and out.width == 1


def test_budget_scale_lowers_the_budget_and_max_tokens():
    stage = LoadAwarePolicy(bands=(LoadBand(free_below=0.3, budget_scale=0.5),))
    out = stage.refine(ctx(free_kv_bytes=1, total_kv_bytes=100), plan(1000))
    assert out.thinking_budget == 500 and out.max_tokens == 756


def test_unknown_load_is_said():
    assert "unknown" in LoadAwarePolicy().refine(ctx(), plan()).reasons["load"]


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(
    st.integers(0, 10**10),
    st.integers(1, 10**10),
    st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0]),
    st.integers(1, 8),
)
def test_load_never_weakens_compression_or_raises_width(free, total, compression, width):
    out = LoadAwarePolicy().refine(
        ctx(free_kv_bytes=free, total_kv_bytes=total), plan(2048, compression=compression, width=width)
    )
    assert out.compression >= compression and out.width <= width and out.thinking_budget <= 2048
