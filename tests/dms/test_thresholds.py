"""The threshold table, fitted on some text, reaches the requested ratio on other held-out text (10%)."""

from __future__ import annotations

import pytest
import torch

from budgetllm.dms.thresholds import fit_threshold_table, measure_compression


def test_threshold_table_reaches_ratio_on_heldout(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    g = torch.Generator().manual_seed(5)
    fit = [torch.randint(0, 49152, (160,), generator=g).tolist() for _ in range(3)]
    held = [torch.randint(0, 49152, (160,), generator=g).tolist() for _ in range(3)]
    table, records = fit_threshold_table(model, fit, ratios=(2.0, 4.0), iters=12, tol=0.01)
    assert table[2.0] > table[4.0]  # more compression needs a lower threshold
    model.dms.threshold_table = table
    for r in (2.0, 4.0):
        m = measure_compression(model, held, model.dms.threshold_for(r))
        assert m["outside_window"] == pytest.approx(r, rel=0.10), (r, m)
        assert 1.0 < m["overall"] < m["outside_window"]


def test_threshold_table_needs_decisions_and_long_text(tiny_loaded):
    with pytest.raises(ValueError, match="no learned decisions"):
        fit_threshold_table(tiny_loaded(), [[1] * 50])
    with pytest.raises(ValueError, match="longer than the window"):
        fit_threshold_table(tiny_loaded("adapter", window=8), [[1] * 9])
