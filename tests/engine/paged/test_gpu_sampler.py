"""The batched sampler (runs on any device; CPU here): greedy rows, bans, top-k / top-p supports."""

from __future__ import annotations

import collections

import torch

from budgetllm.engine.paged.sampler import GPUSampler, make_sampling_batch
from budgetllm.engine.rules import ALWAYS, DENSE, FORCED, THRESHOLD, WINDOW, decide_rows
from budgetllm.types import SamplingParams

CPU = torch.device("cpu")


def test_greedy_rows_and_bans():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    top = logits.argmax(-1)
    sb = make_sampling_batch([SamplingParams()] * 3, [None, [int(top[1])], None], CPU)
    out = GPUSampler(CPU, 0)(logits.clone(), sb)
    assert out[0] == top[0] and out[2] == top[2] and out[1] != top[1]


def test_mixed_batch_supports():
    lg = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(3000, 1)
    params = [SamplingParams(temperature=1.0, top_k=2)] * 1000 + [SamplingParams(temperature=1.0, top_p=0.5)] * 1000
    params += [SamplingParams()] * 1000
    out = GPUSampler(CPU, 1)(lg.clone(), make_sampling_batch(params, [None] * 3000, CPU)).tolist()
    assert set(out[:1000]) == {0, 1}  # top-k 2
    assert set(out[1000:2000]) == {0}  # p(0) = 0.64 >= 0.5
    assert set(out[2000:]) == {0}
    counts = collections.Counter(out[:1000])
    assert 0.62 < counts[0] / 1000 < 0.84  # softmax([3, 2])[0] = 0.73


def test_row_rules_match_eviction_rule():
    """Each rule's row encoding decides as the semantics written out here (decision t = fate of token t-1)."""
    from budgetllm.engine.eviction import EvictionRule

    pos = torch.arange(0, 40)
    logits = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
    k = (pos - 1)[:, None].expand(40, 3)
    grid = ((0.3, -0.2, 1.0), (0.0, 0.5, -1.0))
    cases = [(DENSE, EvictionRule("dense"), torch.zeros(40, 3, dtype=torch.bool)),
             (THRESHOLD, EvictionRule("dms", threshold=0.3), logits > 0.3),
             (THRESHOLD, EvictionRule("dms", threshold=grid), logits > torch.tensor(grid[1])),
             (WINDOW, EvictionRule("window", window=8, sinks=4), k >= 4),
             (FORCED, EvictionRule("forced", period=8), k % 8 != 0)]
    for code, rule, want in cases:
        row = rule.row(True)
        assert row.code == code
        n = pos.shape[0]
        thr = row.thr_grid(2, 3)[1][None].expand(n, 3)
        got = decide_rows(logits, pos, torch.full((n,), code), thr, torch.full((n,), row.sinks),
                          torch.full((n,), row.period), 3)
        assert torch.equal(got, want), rule
        assert torch.equal(rule.decide(logits, pos, 3, layer=1), want), rule
    always = decide_rows(None, pos, torch.full((40,), ALWAYS), torch.zeros(40, dtype=torch.float64),
                         torch.zeros(40), torch.ones(40), 3)
    assert bool(always.all())
