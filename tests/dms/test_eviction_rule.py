"""EvictionRule.for_call: the one place a call's ratio becomes its eviction rule (and its row codes)."""

from __future__ import annotations

import math

import pytest

from budgetllm.engine.eviction import DENSE, THRESHOLD, WINDOW, EvictionRule
from budgetllm.models.dms_spec import DMSSpec


def test_ratio_one_and_disabled_eviction_are_dense():
    spec = DMSSpec(variant="adapter", native_cr=8, window=16)
    assert EvictionRule.for_call(spec, 1.0, 100).mode == "dense"
    spec.disable_eviction = True
    rule = EvictionRule.for_call(spec, 8.0, 100)
    assert rule.mode == "dense" and not rule.evicts and rule.ratio == 8.0 and rule.expected_cr == 1.0
    assert rule.row(True).code == DENSE


def test_no_decisions_use_a_sliding_window_sized_for_the_call():
    rule = EvictionRule.for_call(DMSSpec(), 4.0, 1000)
    assert (rule.mode, rule.window, rule.sinks) == ("window", 246, 4) and rule.row(False).code == WINDOW
    assert EvictionRule.for_call(DMSSpec(), 8.0, 100).window == 64  # never below 64


def test_table_gives_per_head_thresholds_and_the_row_carries_them():
    spec = DMSSpec(variant="borrowed", native_cr=8, window=16)
    spec.set_table({2.0: [[1.0, 2.0]], 8.0: [[-1.0, 0.5]]}, 1, 2)
    rule = EvictionRule.for_call(spec, 8.0, 100)
    assert rule.threshold == ((-1.0, 0.5),) and rule.source == "table" and rule.expected_cr == 8.0
    row = rule.row(True)
    assert row.code == THRESHOLD and row.thr_grid(1, 2).tolist() == [[-1.0, 0.5]]
    assert rule.row(False).code == DENSE  # no logits: nothing to compare


def test_without_a_table_the_trained_ratio_is_the_trained_rule():
    spec = DMSSpec(variant="adapter", native_cr=8)
    assert EvictionRule.for_call(spec, 8.0, 100).threshold == 0.0
    short = EvictionRule.for_call(spec, 3.0, 100, prompt_ids=[1, 2, 3], loaded=object())
    assert short.threshold == 0.0 and "too short" in short.source  # under 16 prompt tokens: no calibration


def test_last_resort_calibrates_on_the_prompt_with_a_warning(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    ids = list(range(100, 160))
    with pytest.warns(UserWarning, match="calibrate-thresholds"):
        rule = EvictionRule.for_call(model.dms, 3.0, 100, prompt_ids=ids, loaded=model)
    assert rule.source == "prompt quantile" and len(rule.threshold) == model.config.num_hidden_layers
    assert all(math.isfinite(t) for row in rule.threshold for t in row)
