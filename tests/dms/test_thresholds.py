"""Per-(layer, KV head) threshold tables: fitted once on some text, they reach the requested ratio on
other held-out text, are continuous in the ratio, and cost no forward pass at call time."""

from __future__ import annotations

import math

import pytest
import torch

from budgetllm.dms import thresholds as th
from budgetllm.dms.thresholds import fit_threshold_table, fit_thresholds, measure_compression


def _text(g, n=3, T=160):
    return [torch.randint(0, 49152, (T,), generator=g).tolist() for _ in range(n)]


def test_table_reaches_ratio_on_heldout(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    g = torch.Generator().manual_seed(5)
    fit, held = _text(g), _text(g)
    table, records = fit_threshold_table(model, fit, ratios=(2.0, 4.0))
    assert set(table) == {2.0, 4.0, 8.0}  # the trained ratio is always a point of the table
    L, H = model.config.num_hidden_layers, model.config.num_key_value_heads
    assert all(len(g) == L and all(len(row) == H for row in g) for g in table.values())
    assert all(a > b for a, b in zip(sum(table[2.0], ()), sum(table[4.0], ()), strict=True))  # per head: monotone
    model.dms.threshold_table = table
    for r in (2.0, 3.0, 4.0):
        m = measure_compression(model, held, model.dms.thresholds_for(r))
        assert m["outside_window"] == pytest.approx(r, rel=0.12), (r, m)
        assert 1.0 < m["overall"] < m["outside_window"]


def test_fit_keeps_each_heads_character_and_the_trained_rule():
    """Heads with different logit distributions get different thresholds; the predicted ratio is met on
    the fitted logits; at the ratio the trained rule (logit > 0) gives, every threshold is ~0."""
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([[-2.0, 0.0, 1.5], [0.5, -1.0, 3.0]])[..., None]
    logits = torch.randn(2, 3, 4000, generator=g) * 2 + shift
    table, records = fit_thresholds(logits, (2.0, 4.0, 8.0))
    for rec in records:
        assert rec["predicted_ratio"] == pytest.approx(rec["ratio"], rel=0.01)
    grid = torch.tensor(table[4.0])
    share = (logits > grid[..., None]).float().mean(-1)  # each head's eviction share at ratio 4
    trained = (logits > 0).float().mean(-1)
    assert grid.std() > 0.1 and share.std() > 0.1  # per head, not one global number
    assert torch.equal(share.flatten().argsort(), trained.flatten().argsort())  # heads keep their order
    native = 1 / float((logits <= 0).float().mean())  # the ratio of the trained rule on these logits
    t_native, _ = fit_thresholds(logits, (native,))
    assert torch.tensor(t_native[native]).abs().max() < 0.05


def test_subsampled_fit_has_no_quantile_size_limit(monkeypatch):
    """torch.quantile refuses inputs over 2**24 elements; the fit subsamples per head instead."""
    logits = torch.randn(2, 4, (1 << 21) + 7, generator=torch.Generator().manual_seed(1))  # 2**24 + 56 values
    table, records = fit_thresholds(logits, (4.0,))
    assert records[0]["predicted_ratio"] == pytest.approx(4.0, rel=0.02)
    monkeypatch.setattr(th, "MAX_PER_HEAD", 1 << 12)  # a coarser subsample gives about the same thresholds
    coarse, _ = fit_thresholds(logits, (4.0,))
    assert torch.allclose(torch.tensor(coarse[4.0]), torch.tensor(table[4.0]), atol=0.1)


def test_table_needs_decisions_and_long_text(tiny_loaded):
    with pytest.raises(ValueError, match="no learned decisions"):
        fit_threshold_table(tiny_loaded(), [[1] * 50])
    with pytest.raises(ValueError, match="longer than the window"):
        fit_threshold_table(tiny_loaded("adapter", window=8), [[1] * 9])


def _count_forwards(llm) -> list[int]:
    """Counts every forward through layer 0's q_proj (any pass over the model: prefill, decode, calibration)."""
    n = [0]
    llm.loaded.hf_model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
    return n


def test_other_ratios_need_no_extra_forward(tiny_dir, tmp_path):
    """With a table, CR 3 (not the trained 8) runs exactly the forwards of a dense call; without one,
    the documented last resort (the prompt quantile) costs one more pass, and warns."""
    from budgetllm import LLM
    from budgetllm.dms.export import write_thresholds

    plain = LLM.from_pretrained(str(tiny_dir("llama", "adapter")), backend="reference", device="cpu", progress=False)
    g = torch.Generator().manual_seed(2)
    table, _ = fit_threshold_table(plain.loaded, _text(g, n=2, T=64))
    path = write_thresholds(tmp_path / "t.json", table)
    with_table = LLM.from_pretrained(str(tiny_dir("llama", "adapter")), backend="reference", device="cpu",
                                     progress=False, thresholds=str(path))
    prompt = " ".join(f"word{i}" for i in range(40))
    for llm, extra in ((with_table, 0), (plain, 1)):
        n = _count_forwards(llm)
        counts = {}
        for cr in (1.0, 3.0):
            n[0] = 0
            with pytest.warns(UserWarning, match="calibrate-thresholds") if extra and cr == 3.0 else _nothing():
                out = llm.generate(prompt, compression=cr, max_tokens=4, thinking_budget=0)
            counts[cr] = n[0] - len(out.token_ids)  # forwards beyond one per generated token
        assert counts[3.0] == counts[1.0] + extra, counts


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_thresholds_for_is_continuous_everywhere(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    g = torch.Generator().manual_seed(7)
    model.dms.threshold_table, _ = fit_threshold_table(model, _text(g, n=2))
    grid = torch.tensor(list(model.dms.threshold_table.values()))
    span = float(grid.max() - grid.min())
    prev = None
    for i in range(1, 400):
        r = 1.05 * 1.01 ** i  # 1% steps from 1.06 to 56: no step may jump (the trained ratio 8 included)
        t = torch.tensor(model.dms.thresholds_for(r))
        if prev is not None:
            assert (t - prev).abs().max() < 0.04 * span, r
            assert bool((t <= prev + 1e-9).all())  # more compression never raises a threshold
        prev = t
    assert math.isinf(model.dms.thresholds_for(1.0))
