"""Calibrated Pareto: most accuracy under a memory cap, or least memory above a floor."""

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import EXAMPLES, assert_invariants, ctx

from budgetllm.policy import CalibrationTable, ParetoPolicy

TABLE = CalibrationTable.load(EXAMPLES / "calibration-example.json")
MiB = 2**20


def test_without_a_cap_the_most_accurate_point_wins():
    p = ParetoPolicy(TABLE).plan(ctx(150))
    best = max(pt.accuracy for pt in TABLE.points)
    assert p.expected_accuracy == best
    assert "most accurate" in p.reasons["thinking_budget"]


def test_a_tight_cap_buys_compression_or_less_thinking():
    loose = ParetoPolicy(TABLE).plan(ctx(150))
    tight = ParetoPolicy(TABLE, max_peak_kv_bytes=20 * MiB).plan(ctx(150))
    assert tight.peak_kv_bytes <= 20 * MiB
    assert tight.expected_accuracy <= loose.expected_accuracy


def test_min_memory_reaches_the_floor_with_the_least_memory():
    policy = ParetoPolicy(TABLE, objective="min_memory", accuracy_floor=0.35)
    p = policy.plan(ctx(150))
    assert p.expected_accuracy >= 0.35
    assert "least memory" in p.reasons["thinking_budget"]


def test_min_memory_says_when_the_floor_is_out_of_reach():
    p = ParetoPolicy(TABLE, objective="min_memory", accuracy_floor=0.99).plan(ctx(150))
    assert "no point reaches accuracy 0.99" in p.reasons["thinking_budget"]


def test_the_callers_compression_and_budget_are_respected():
    p = ParetoPolicy(TABLE).plan(ctx(150, compression=2.0, thinking_budget=700))
    assert p.compression == 2.0 and p.thinking_budget <= 700


def test_a_kv_read_budget_is_a_cap_too():
    p = ParetoPolicy(TABLE, max_kv_bytes_read=5 * 2**30).plan(ctx(150))
    assert p.kv_bytes_read <= 5 * 2**30


def test_unknown_bytes_per_token_uses_the_tables_costs():
    from budgetllm.policy import ModelProfile

    p = ParetoPolicy(TABLE, max_peak_kv_bytes=20 * MiB).plan(ctx(150, model=ModelProfile()))
    assert p.thinking_budget is not None and p.peak_kv_bytes is None


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 2**31), st.sampled_from(["max_accuracy", "min_memory"]))
def test_a_pareto_plan_fits_its_cap_whenever_any_point_does(prompt, cap, objective):
    policy = ParetoPolicy(TABLE, max_peak_kv_bytes=cap, objective=objective, accuracy_floor=0.3)
    p = policy.plan(ctx(prompt))
    assert_invariants(p)
    if "nothing fits" not in p.reasons["thinking_budget"]:
        assert p.peak_kv_bytes <= cap


def test_the_engines_calibration_is_used_when_the_policy_has_none():
    from dataclasses import replace

    import pytest

    from budgetllm.errors import InvalidRequestError

    model = replace(ctx().model, calibration=TABLE)
    assert ParetoPolicy().plan(ctx(150, model=model)).expected_accuracy is not None
    with pytest.raises(InvalidRequestError, match="no calibration table"):
        ParetoPolicy().plan(ctx(150))
    with pytest.raises(InvalidRequestError, match="not in the table"):
        ParetoPolicy(TABLE).plan(ctx(150, task="gsm"))


def test_a_pareto_file_without_a_calibration_path_reads_the_engines(tmp_path):
    from dataclasses import replace

    from budgetllm.policy import load_policy

    path = tmp_path / "p.yaml"
    path.write_text("version: 1\npareto: {objective: min_memory, accuracy_floor: 0.3}\n")
    plan = load_policy(path).plan(ctx(150, model=replace(ctx().model, calibration=TABLE)))
    assert plan.expected_accuracy >= 0.3
