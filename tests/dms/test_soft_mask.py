"""The training mask at tau -> 0 is the hard inference mask; the training forward matches the oracle."""

from __future__ import annotations

import math

import torch

from budgetllm.dms.mask import dms_visibility_mask, evict_flags_from_decisions
from budgetllm.dms.oracle import masked_model_forward
from budgetllm.dms.train_attention import dms_train_forward, soft_attention_mask, soft_mask_bias
from budgetllm.engine.eviction import EvictionRule


def test_soft_mask_at_small_tau_equals_hard_mask():
    g = torch.Generator().manual_seed(0)
    B, T, H, w = 2, 37, 3, 5
    logits = torch.randn(B, T, H, generator=g) * 3
    logits = logits + 0.2 * logits.sign()  # keep away from the boundary
    tau = 1e-4
    soft = soft_attention_mask(soft_mask_bias(logits / tau), w, T, "cpu").exp()  # [B, H, T, T]
    for b in range(B):
        hard = dms_visibility_mask(evict_flags_from_decisions(logits[b] > 0), w).float()
        assert torch.allclose(soft[b], hard, atol=1e-6)


def test_soft_mask_inside_window_is_untouched():
    z = torch.full((1, 20, 2), 50.0)  # everything marked for eviction
    m = soft_attention_mask(soft_mask_bias(z), 4, 20, "cpu")
    pos = torch.arange(20)
    dist = pos[:, None] - pos[None, :]
    assert torch.all(m[0, :, (dist >= 0) & (dist <= 4)] == 0)
    assert torch.all(m[0, :, dist > 4] < -40)
    assert torch.all(torch.isinf(m[0, :, dist < 0]))


def test_training_forward_at_small_tau_equals_inference_oracle(tiny_loaded):
    for variant in ("adapter", "borrowed"):
        model = tiny_loaded(variant, arch="qwen3" if variant == "borrowed" else "llama")
        ids = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(3))
        expected, flags = masked_model_forward(model, ids[0], EvictionRule("dms", window=model.dms.window, threshold=0.0))
        assert any(f.any() for f in flags)
        with torch.no_grad():
            out = dms_train_forward(model.hf_model, model.dms, ids, window=model.dms.window, tau=1e-5)
            got = model.hf_model.lm_head(out.hidden)[0]
        assert (got - expected).abs().max().item() < 1e-3, variant
        # the relaxed decisions are the inference logits over tau
        assert all(((z[0] > 0)[1:] == f[:-1]).all() for z, f in zip(out.relaxed, flags, strict=True))


def test_teacher_mode_is_the_dense_model(tiny_loaded):
    model = tiny_loaded("adapter")
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        dense = model.hf_model(ids).logits
        out = dms_train_forward(model.hf_model, model.dms, ids, window=4, tau=0.1, teacher=True)
        got = model.hf_model.lm_head(out.hidden)
    assert out.relaxed == []
    assert (got - dense).abs().max().item() < 1e-4
    assert math.isfinite(got.sum().item())
