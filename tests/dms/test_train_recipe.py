"""The full-model recipe: a dense teacher, nothing evicted while the target ratio is 1, NVIDIA's lr."""

from __future__ import annotations

import pytest
import torch

from budgetllm.dms.train import RetrofitConfig, Retrofitter


def test_learning_rate_defaults_by_scope():
    assert RetrofitConfig(scope="full").lr == 3e-5  # NVIDIA's configs/qwen3_8b.yaml
    assert RetrofitConfig(scope="adapter").lr == 5e-4  # the shipped adapter's documented run
    assert RetrofitConfig(scope="full", lr=1e-4).lr == 1e-4


def test_full_scope_teacher_is_the_dense_original(tiny_loaded, rows):
    """The teacher uses every query channel (the borrowed one included): it is the HF model untouched."""
    model = tiny_loaded(arch="qwen3")
    ids = rows(n=2, T=64)
    with torch.no_grad():
        dense = model.hf_model.model(input_ids=ids, use_cache=False).last_hidden_state.clone()
    tr = Retrofitter(model, RetrofitConfig(target_cr=4, window=8, steps=4, batch_size=2, seq_len=64, scope="full"),
                     rows())
    tr.train(progress=False)  # the student changes; the teacher must not
    assert torch.allclose(tr.teacher_hidden(ids), dense, atol=1e-5)


def test_full_scope_evicts_nothing_while_the_ratio_is_one(tiny_loaded, rows):
    model = tiny_loaded(arch="qwen3")
    cfg = RetrofitConfig(target_cr=4, window=8, steps=6, warmup_steps=3, batch_size=2, seq_len=64, scope="full")
    tr = Retrofitter(model, cfg, rows())
    hist = tr.train(progress=False)
    warm = hist[:3]
    assert all(r["cr_target"] == 1.0 and r["evict_rate"] == 0.0 and r["compression_loss"] == 0.0 for r in warm)
    assert hist[3]["cr_target"] == 1.0 and hist[4]["cr_target"] > 1.0  # then the ramp starts from 1
    assert hist[-1]["evict_rate"] > 0.0  # after the warm-up the decisions are live (relaxed, with noise)


def test_neuron_zeroing_leaves_logits_at_minus_offset(tiny_loaded, rows):
    """After the warm-up the borrowed channel's q_proj rows are zero, so every decision logit is -offset
    (evict nothing) before the compression loss starts to move them."""
    from budgetllm.dms.decisions import DecisionHead, attention_inputs

    model = tiny_loaded(arch="llama")
    cfg = RetrofitConfig(target_cr=4, window=8, steps=2, warmup_steps=2, batch_size=2, seq_len=64, scope="full",
                         lr=1e-12)
    tr = Retrofitter(model, cfg, rows())
    tr.train(progress=False)
    c = model.config
    Hq, H = c.num_attention_heads, c.num_key_value_heads
    D = c.hidden_size // Hq
    layer = model.hf_model.model.layers[0]
    x = torch.randn(9, c.hidden_size)
    cos, sin = torch.ones(9, D), torch.zeros(9, D)
    with torch.no_grad():
        _, _, _, logits = attention_inputs(layer, DecisionHead(tr.spec, 0, Hq, H), x, cos, sin, (Hq, H, D))
    assert torch.allclose(logits, torch.full_like(logits, -cfg.alpha_offset), atol=1e-6)
    assert pytest.approx(0.0) == float(layer.self_attn.q_proj.weight[D - 1].abs().max())
