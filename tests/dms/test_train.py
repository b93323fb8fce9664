"""Retrofit training on a tiny model: the loss falls and the eviction rate moves toward the target."""

from __future__ import annotations

import pytest
import torch

from budgetllm.dms.train import RetrofitConfig, RetrofitConfigError, Retrofitter


def test_few_steps_lower_loss_and_move_eviction_rate(tiny_loaded, rows):
    model = tiny_loaded()
    cfg = RetrofitConfig(target_cr=4, initial_cr=4, window=8, steps=10, batch_size=4, seq_len=64, lr=2e-2)
    tr = Retrofitter(model, cfg, rows())
    hist = tr.train(progress=False)
    first, last = hist[0], hist[-3:]
    assert first["evict_rate"] < 0.1  # zero-initialised adapter: logit -5, almost nothing evicted
    assert sum(r["loss"] for r in last) / 3 < first["loss"] * 0.8
    assert sum(r["evict_rate"] for r in last) / 3 > first["evict_rate"] + 0.2
    assert all(r["target_frac"] == pytest.approx(0.75) for r in hist)


def test_cr_schedule_is_linear_then_flat():
    cfg = RetrofitConfig(target_cr=8, steps=30, ramp_fraction=2 / 3, seq_len=512, window=64)
    assert cfg.cr_at(0) == 1.0
    assert cfg.cr_at(10) == pytest.approx(4.5)
    assert cfg.cr_at(20) == cfg.cr_at(29) == 8.0


def test_resume_continues_from_checkpoint(tiny_loaded, rows, tmp_path):
    cfg = RetrofitConfig(target_cr=4, window=8, steps=2, batch_size=2, seq_len=64, save_every=1)
    tr = Retrofitter(tiny_loaded(), cfg, rows(), checkpoint_dir=tmp_path)
    tr.train(progress=False)
    cfg2 = RetrofitConfig(target_cr=4, window=8, steps=3, batch_size=2, seq_len=64)
    tr2 = Retrofitter(tiny_loaded(), cfg2, rows(), checkpoint_dir=tmp_path)
    assert tr2.step == 2 and len(tr2.history) == 2
    assert torch.equal(tr2.params[0].detach(), tr.params[0].detach())
    tr2.train(progress=False)
    assert tr2.step == 3
    with pytest.raises(RetrofitConfigError, match="window=8"):
        Retrofitter(tiny_loaded(), RetrofitConfig(target_cr=4, window=16, steps=3, batch_size=2, seq_len=64),
                    rows(), checkpoint_dir=tmp_path)


@pytest.mark.parametrize("kw,match", [
    ({"target_cr": 1.0}, "target_cr"),
    ({"seq_len": 64, "window": 64}, "seq_len"),
    ({"scope": "everything"}, "scope"),
    ({"lr": 0.0}, "lr"),
    ({"tau": 0.0}, "tau"),
    ({"steps": 0}, "steps"),
    ({"initial_cr": 9.0}, "initial_cr"),
])
def test_bad_settings_give_clear_errors(kw, match):
    base = dict(seq_len=128, window=16)
    base.update(kw)
    with pytest.raises(RetrofitConfigError, match=match):
        RetrofitConfig(**base).validate()


def test_bad_rows_and_context(tiny_loaded, rows):
    model = tiny_loaded()
    with pytest.raises(RetrofitConfigError, match="seq_len=64"):
        Retrofitter(model, RetrofitConfig(window=8, seq_len=64, batch_size=2), rows(T=32))
    with pytest.raises(RetrofitConfigError, match="context"):
        RetrofitConfig(window=8, seq_len=4096).validate(max_context=2048)


def test_full_scope_trains_borrowed_channel(tiny_loaded, rows):
    model = tiny_loaded()
    cfg = RetrofitConfig(target_cr=2, initial_cr=2, window=8, steps=2, batch_size=2, seq_len=64, lr=1e-3, scope="full")
    tr = Retrofitter(model, cfg, rows())
    before = model.hf_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    tr.train(progress=False)
    assert tr.spec.variant == "borrowed"
    assert not torch.equal(before, model.hf_model.model.layers[0].self_attn.q_proj.weight)
    with pytest.raises(RetrofitConfigError, match="export_nvidia"):
        tr.adapter_file("tiny")
