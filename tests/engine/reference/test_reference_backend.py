"""The reference backend against HF transformers (dense) and against full-sequence masked attention (DMS)."""

from __future__ import annotations

import math

import pytest
import torch

from budgetllm.dms.oracle import masked_model_forward
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.reference.sequence import ReferenceSequence
from budgetllm.models import load_model

ARCHS = ["llama", "qwen2", "qwen3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_compression_1_matches_hf_generate(arch, tiny_llm):
    llm = tiny_llm(arch)
    prompt = "Tell me about the sea."
    out = llm.generate(prompt, compression=1, max_tokens=12)
    ids = torch.tensor([out.prompt_token_ids])
    hf = llm.loaded.hf_model.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids),
                                      eos_token_id=sorted(llm.prompter.eos_ids), pad_token_id=0)
    expected = hf[0, ids.shape[1]:].tolist()
    assert out.token_ids == expected[: len(out.token_ids)]
    assert out.usage.kv.compression_achieved == 1.0 and out.usage.kv.evicted_tokens == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_logits_close_to_hf(arch, tiny_dir):
    model = load_model(str(tiny_dir(arch)), device="cpu", progress=False)
    ids = torch.randint(0, 49152, (23,), generator=torch.Generator().manual_seed(1))
    ref = model.hf_model(ids[None]).logits[0].float()
    seq = ReferenceSequence(model, EvictionRule("dense"))
    out = torch.cat([seq.forward(ids[:9]), seq.forward(ids[9:10]), seq.forward(ids[10:])])
    assert (out - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch,dms", [("llama", "borrowed"), ("qwen2", "adapter"), ("qwen3", "borrowed"),
                                      ("qwen3", "adapter")])
@pytest.mark.parametrize("chunks", [[20, 1, 1, 1, 1, 1, 1, 1, 1, 1], [7, 9, 1, 1, 5, 1, 1, 1]])
def test_incremental_eviction_equals_masked_attention(arch, dms, chunks, tiny_dir):
    """Every step of a run that physically drops tokens equals one pass of brute-force masked attention."""
    model = load_model(str(tiny_dir(arch, dms)), device="cpu", progress=False)
    seed = sum(chunks) * 31 + len(arch)
    ids = torch.randint(0, 49152, (sum(chunks),), generator=torch.Generator().manual_seed(seed))
    rule = EvictionRule("dms", window=model.dms.window, threshold=0.0)
    expected, flags = masked_model_forward(model, ids, rule)
    assert any(f.any() for f in flags), "the test model should evict something"
    seq = ReferenceSequence(model, rule)
    outs, start = [], 0
    for n in chunks:
        outs.append(seq.forward(ids[start:start + n]))
        start += n
    got = torch.cat(outs)
    assert torch.allclose(got, expected, atol=2e-4, rtol=1e-4), (got - expected).abs().max()
    # Per-head kept lengths are exactly what the decisions say.
    last = len(ids) - 1
    for li, layer_flags in enumerate(flags):
        for h in range(layer_flags.shape[1]):
            dist = last - torch.arange(len(ids))
            kept = (~layer_flags[:, h] | (dist <= rule.window)).sum().item()
            assert seq.row_lengths()[li][h] == kept
    assert seq.live_entries() < len(ids) * model.config.num_hidden_layers * model.config.num_key_value_heads


def test_window_mode_keeps_sinks_and_recent(tiny_dir):
    model = load_model(str(tiny_dir("llama")), device="cpu", progress=False)
    rule = EvictionRule("window", window=6, sinks=2)
    ids = torch.arange(100, 140)
    expected, _ = masked_model_forward(model, ids, rule)
    seq = ReferenceSequence(model, rule)
    got = torch.cat([seq.forward(ids[:10])] + [seq.forward(ids[i:i + 1]) for i in range(10, 40)])
    assert torch.allclose(got, expected, atol=2e-4, rtol=1e-4)
    assert all(n == 2 + 7 for layer in seq.row_lengths() for n in layer)
    assert seq.rows[0][0].pos.tolist() == [0, 1] + list(range(33, 40))


def test_threshold_shifts_eviction(tiny_dir):
    model = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", progress=False)
    ids = torch.randint(0, 49152, (60,), generator=torch.Generator().manual_seed(5))
    kept = []
    for thr in (-math.inf, 0.0, 50.0, math.inf):
        seq = ReferenceSequence(model, EvictionRule("dms", window=model.dms.window, threshold=thr))
        seq.forward(ids)
        kept.append(seq.live_entries())
    assert kept[0] < kept[1] < kept[2] <= kept[3]
    assert kept[3] == 60 * model.config.num_hidden_layers * model.config.num_key_value_heads


def test_query_blocking_skips_only_invisible_keys(tiny_dir, monkeypatch):
    """Long chunks are attended block by block; the result is still the masked-attention oracle."""
    monkeypatch.setattr(ReferenceSequence, "QUERY_BLOCK", 5)
    model = load_model(str(tiny_dir("qwen2", "adapter")), device="cpu", progress=False)
    ids = torch.randint(0, 49152, (47,), generator=torch.Generator().manual_seed(9))
    rule = EvictionRule("dms", window=model.dms.window, threshold=0.0)
    expected, _ = masked_model_forward(model, ids, rule)
    seq = ReferenceSequence(model, rule)
    got = torch.cat([seq.forward(ids[:23]), seq.forward(ids[23:24]), seq.forward(ids[24:])])
    assert torch.allclose(got, expected, atol=2e-4, rtol=1e-4)
