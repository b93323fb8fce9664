"""Decision logits of both checkpoint variants, computed here from the formula written out (no shared
code: not ``attention_inputs``, not ``DecisionHead``, not the rule), against every path that uses them:
the reference backend, the training forward and the threshold fit.

Borrowed channel (nvidia/Qwen3-8B-DMS-8x): logit[t, g] = q_norm(q_proj(RMSNorm(x_t)))[head g*G, D-1]
* alpha_scale - alpha_offset, after q_norm and before RoPE.
Adapter (Model-Optimizer separate_alpha): logit[t, g] = (W_alpha (x_t / rms(x_t) * w_norm))[g]
* alpha_scale - alpha_offset, on the residual stream x before the layer's input norm.
"""

from __future__ import annotations

import torch

from budgetllm.dms.thresholds import decision_logits
from budgetllm.dms.train_attention import dms_train_forward
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.reference.sequence import ReferenceSequence


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _borrowed_formula(loaded, ids):
    """Layer 0 only (its residual is the embedding; later layers would need the DMS attention)."""
    hf, cfg, dms = loaded.hf_model, loaded.config, loaded.dms
    Hq, H, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layer = hf.model.layers[0]
    x = hf.model.embed_tokens.weight[ids].double()
    h = _rms(x, layer.input_layernorm.weight.double(), cfg.rms_norm_eps)
    q = (h @ layer.self_attn.q_proj.weight.double().T).view(len(ids), Hq, D)
    q = _rms(q, layer.self_attn.q_norm.weight.double(), cfg.rms_norm_eps)
    return q[:, 0::Hq // H, D - 1] * dms.alpha_scale - dms.alpha_offset  # [T, H]


def _adapter_formula(loaded, ids):
    """Every layer: the adapter does not change attention, so the dense HF forward gives the residuals."""
    hf, dms = loaded.hf_model, loaded.dms
    with torch.no_grad():
        hidden = hf(input_ids=torch.as_tensor(ids)[None], output_hidden_states=True).hidden_states
    out = []
    for li in range(loaded.config.num_hidden_layers):
        w = dms.adapter_weights[li]
        x = hidden[li][0].double()
        z = _rms(x, w["norm_weight"].double(), loaded.config.rms_norm_eps) @ w["proj_weight"].double().T
        out.append(z * dms.alpha_scale - dms.alpha_offset)
    return out


def _reference_logits(loaded, ids):
    seq = ReferenceSequence(loaded, EvictionRule("dense"), collect_logits=True)
    seq.forward(ids)
    return seq.logit_log


def _train_logits(loaded, ids):
    """The training forward's relaxed logits with no noise and tau 1 are the logits themselves."""
    with torch.no_grad():
        out = dms_train_forward(loaded.hf_model, loaded.dms, torch.as_tensor(ids)[None], window=10**6, tau=1.0)
    return [r[0] for r in out.relaxed]


def test_borrowed_channel_logits_from_the_formula(tiny_loaded):
    loaded = tiny_loaded("borrowed", arch="qwen3")
    ids = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(11)).tolist()
    want = _borrowed_formula(loaded, ids)
    assert want.abs().max() > 1.0  # not a degenerate case
    for name, got in (("reference", _reference_logits(loaded, ids)[0]), ("train", _train_logits(loaded, ids)[0]),
                      ("fit", decision_logits(loaded, [ids])[0].T)):
        ref = want[1:] if name == "fit" else want  # the fit drops token 0's logit (it decides no fate)
        assert torch.allclose(got.double(), ref, atol=1e-3, rtol=1e-4), name


def test_adapter_logits_from_the_formula(tiny_loaded):
    loaded = tiny_loaded("adapter", arch="llama")
    ids = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(12)).tolist()
    want = _adapter_formula(loaded, ids)
    fit = decision_logits(loaded, [ids])
    for li, w in enumerate(want):
        assert w.abs().max() > 1.0
        assert torch.allclose(_reference_logits(loaded, ids)[li].double(), w, atol=1e-3, rtol=1e-4), li
        assert torch.allclose(_train_logits(loaded, ids)[li].double(), w, atol=1e-3, rtol=1e-4), li
        assert torch.allclose(fit[li].T.double(), w[1:], atol=1e-3, rtol=1e-4), li


def test_decisions_follow_the_logits_and_the_shift(tiny_loaded):
    """The reference backend's flags: token k is flagged iff the logit at k+1 exceeds its head's threshold."""
    loaded = tiny_loaded("adapter", arch="llama")
    ids = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(13)).tolist()
    want = _adapter_formula(loaded, ids)
    grid = ((5.0, -20.0), (0.0, 30.0))
    rule = EvictionRule("dms", window=10**6, threshold=grid)  # a huge window: every flag stays visible
    seq = ReferenceSequence(loaded, rule)
    seq.forward(ids)
    for li in range(2):
        for h in range(2):
            flags = seq.rows[li][h].flag
            expect = torch.zeros(40, dtype=torch.bool)
            expect[:-1] = want[li][1:, h] > grid[li][h]
            assert torch.equal(flags, expect), (li, h)
