"""The shared cost model: live tokens, peak and KV reads (docs/notes/budget.md §3.1)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetllm.policy import kv_tokens_read, live_tokens, parse_size, peak_kv_tokens


def test_dense_keeps_every_token():
    assert live_tokens(5000, 1.0, 512) == 5000


def test_compression_cannot_beat_dense_on_short_sequences():
    assert live_tokens(300, 8.0, 512) == 300  # the window holds them all


def test_long_sequences_keep_about_one_in_cr_plus_the_window():
    assert live_tokens(80_000, 8.0, 512) == pytest.approx(10_000 + 512)


def test_width_multiplies_the_peak():
    assert peak_kv_tokens(100, 900, 4.0, 512, width=4) == 4 * live_tokens(1000, 4.0, 512)


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(
    prompt=st.integers(0, 5000),
    generated=st.integers(1, 3000),
    compression=st.sampled_from([1.0, 2.0, 4.0, 8.0, 3.3]),
    window=st.integers(0, 1024),
)
def test_closed_form_reads_match_the_step_sum(prompt, generated, compression, window):
    brute = sum(live_tokens(t, compression, window) for t in range(prompt, prompt + generated))
    closed = kv_tokens_read(prompt, generated, compression, window)
    # integral vs left Riemann sum: differ by at most half a step's growth per step
    assert abs(closed - brute) <= generated * 0.5 + 1e-6 * brute + 1


@settings(deadline=None)  # a shared CI machine must not turn slowness into failures
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from([1.0, 2.0, 4.0, 8.0]))
def test_costs_grow_with_generated_tokens_and_shrink_with_compression(prompt, generated, compression):
    assert peak_kv_tokens(prompt, generated + 1, compression, 512) >= peak_kv_tokens(
        prompt, generated, compression, 512
    )
    assert peak_kv_tokens(prompt, generated, compression * 2, 512) <= peak_kv_tokens(
        prompt, generated, compression, 512
    )
    assert kv_tokens_read(prompt, generated + 1, compression, 512) >= kv_tokens_read(
        prompt, generated, compression, 512
    )


@pytest.mark.parametrize(
    "text,expected",
    [("2GiB", 2 * 2**30), ("512 MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("4096", 4096), (77, 77)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["2 gigs", "", "-5MiB", "GiB"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
