"""The CPU backend against the reference backend (the oracle) and brute-force masked attention.

Sequence level: every forward's logits and every row's kept length equal the reference's, for every
family, both DMS variants and every eviction mode, over prefills, decode steps and later chunks.
Call level: greedy tokens and KV accounting of whole calls (CR 1, CR 8, a calibrated ratio,
thinking budgets, resumed turns) equal the reference backend's. All float32 on random weights.
"""

from __future__ import annotations

import math

import pytest
import torch

from budgetllm.dms.oracle import masked_model_forward
from budgetllm.engine.cpu.backend import CPUWeights
from budgetllm.engine.cpu.cache import RowCache
from budgetllm.engine.cpu.sequence import CPUSequence
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.reference.sequence import ReferenceSequence
from budgetllm.models import load_model

VARIANTS = [("llama", None), ("llama", "borrowed"), ("qwen2", "adapter"), ("qwen3", "borrowed"), ("qwen3", "adapter")]
RULES = {  # the tiny DMS checkpoints have window 8
    "dense": EvictionRule("dense", window=8),
    "dms": EvictionRule("dms", window=8, threshold=0.0),
    "dms-w0": EvictionRule("dms", window=0, threshold=0.0),
    "dms-w1": EvictionRule("dms", window=1, threshold=-1.0),
    "window": EvictionRule("window", window=5, sinks=2),
    "forced": EvictionRule("forced", window=8, period=3),
}
CHUNKS = [11, 1, 1, 1, 1, 6, *([1] * 14), 9, *([1] * 12), 2, 1, 1]


_LOADED: dict = {}


def _models(tiny_dir, arch, dms):
    """(a model for the reference, CPUWeights over a second copy), loaded once per module."""
    if (arch, dms) not in _LOADED:
        ref = load_model(str(tiny_dir(arch, dms)), device="cpu", progress=False)
        fast = load_model(str(tiny_dir(arch, dms)), device="cpu", progress=False)
        _LOADED[arch, dms] = ref, CPUWeights(fast)
    return _LOADED[arch, dms]


@pytest.mark.parametrize("arch,dms", VARIANTS)
@pytest.mark.parametrize("rule_name", list(RULES))
def test_every_forward_equals_the_reference(arch, dms, rule_name, tiny_dir):
    ref_model, weights = _models(tiny_dir, arch, dms)
    rule = RULES[rule_name]
    ids = torch.randint(0, 49152, (sum(CHUNKS),), generator=torch.Generator().manual_seed(len(arch) + len(rule_name)))
    ref, fast = ReferenceSequence(ref_model, rule), CPUSequence(weights, rule)
    start = 0
    for n in CHUNKS:
        a, b = ref.forward(ids[start:start + n]), fast.forward(ids[start:start + n])
        start += n
        assert a.shape == b.shape and torch.allclose(a, b, atol=5e-5, rtol=1e-5), (a - b).abs().max()
        assert fast.row_lengths() == ref.row_lengths() and fast.seen == ref.seen == start
    assert fast.live_entries() == ref.live_entries() and fast.ids == ids.tolist()
    if rule.evicts and (rule.mode != "dms" or dms is not None):
        assert fast.live_entries() < sum(CHUNKS) * len(weights.layers) * weights.H


@pytest.mark.parametrize("arch,dms", [("qwen3", "borrowed"), ("qwen2", "adapter")])
def test_rows_hold_exactly_what_the_newest_token_sees(arch, dms, tiny_dir):
    """Against one brute-force masked pass: the logits, and each row's set of kept positions."""
    ref_model, weights = _models(tiny_dir, arch, dms)
    rule = EvictionRule("dms", window=ref_model.dms.window, threshold=0.0)
    ids = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(7))
    expected, flags = masked_model_forward(ref_model, ids, rule)
    seq = CPUSequence(weights, rule)
    got = torch.cat([seq.forward(ids[:17])] + [seq.forward(ids[i:i + 1]) for i in range(17, 40)])
    assert torch.allclose(got, expected, atol=2e-4, rtol=1e-4)
    c, last = seq.cache, len(ids) - 1
    for li, layer_flags in enumerate(flags):
        for h in range(layer_flags.shape[1]):
            n = int(c.lens[li, h])
            kept = sorted(c.pos[li, h, :n].tolist())
            dist = last - torch.arange(len(ids))
            assert kept == (~layer_flags[:, h] | (dist <= rule.window)).nonzero().squeeze(1).tolist()
            # the ring points at the last w + 1 tokens' slots
            for p in range(last - rule.window, last + 1):
                assert int(c.pos[li, h, c.ring[li, h, p % c.W1]]) == p


def test_fork_goes_on_independently_and_rows_grow(tiny_dir, monkeypatch):
    monkeypatch.setattr(RowCache, "GROW", 3)  # many small growths of the padded tensors
    ref_model, weights = _models(tiny_dir, "qwen3", "adapter")
    rule = EvictionRule("dms", window=ref_model.dms.window, threshold=0.0)
    ids = torch.randint(0, 49152, (50,), generator=torch.Generator().manual_seed(3)).tolist()
    seq = CPUSequence(weights, rule, last_logits_only=True)
    seq.forward(ids[:20])
    twin = seq.fork()
    outs_a = [seq.forward([t]) for t in ids[20:35]]
    outs_b = [twin.forward([t]) for t in ids[20:35]]  # the same tokens from the forked state
    assert all(torch.equal(a, b) for a, b in zip(outs_a, outs_b, strict=True))
    assert twin.row_lengths() == seq.row_lengths()
    twin.forward(ids[35:50])
    ref = ReferenceSequence(ref_model, rule)
    ref.forward(ids[:20])
    for t in ids[20:35]:
        ref.forward([t])
    assert seq.row_lengths() == ref.row_lengths()  # the twin's steps left the original alone
    assert seq.forward([5]).shape == (1, ref_model.config.vocab_size)


def test_calibration_logits_equal_the_reference(tiny_dir):
    from budgetllm.engine.cpu import CPUBackend
    from budgetllm.engine.reference.backend import ReferenceBackend

    ref_model = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", progress=False)
    fast_model = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", progress=False)
    prompt = list(range(300, 340))
    a, b = (_dense_logits(backend, prompt) for backend in (ReferenceBackend(ref_model), CPUBackend(fast_model)))
    assert len(a) == len(b) == ref_model.config.num_hidden_layers
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a, b, strict=True))


def _dense_logits(backend, prompt):
    """Every layer's decision logits over a dense pass of ``prompt`` through ``backend``'s own sequence."""
    from budgetllm.engine.eviction import EvictionRule

    seq = backend.new_sequence(EvictionRule(), collect_logits=True)
    seq.forward(prompt)
    return seq.logit_log


def test_the_cpu_backend_refuses_other_devices():
    from types import SimpleNamespace

    from budgetllm.engine.cpu import CPUBackend
    from budgetllm.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="runs on the CPU"):
        CPUBackend(SimpleNamespace(device=torch.device("cuda")))


def test_rules_without_logits_are_decided_once(tiny_dir):
    _, weights = _models(tiny_dir, "llama", "borrowed")
    assert CPUSequence(weights, EvictionRule("dms", threshold=math.inf))._layer_independent
    assert not CPUSequence(weights, EvictionRule("dms", threshold=0.0))._layer_independent
