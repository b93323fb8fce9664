"""step_inputs (kernels/step_inputs.py: positions, layer-independent decisions and thresholds of a
decode step in one launch) against the engine's own definition (``rules.step_decisions`` + the
threshold gather) and the naive twin, on fresh random rows of every rule code: exact."""

import pytest
import torch
from kvtestlib import DEVICE

from budgetllm.engine.rules import ALWAYS, FORCED, THRESHOLD, WINDOW, step_decisions
from budgetllm.kernels import reference as ref
from budgetllm.kernels.step_inputs import step_inputs

CODES = (WINDOW, ALWAYS, FORCED, THRESHOLD)


@pytest.mark.parametrize(("bs", "maxbs", "L", "H", "seed"), [(1, 4, 3, 2, 0), (5, 8, 2, 3, 1), (7, 7, 4, 1, 2)])
def test_step_inputs_equal_the_torch_ops(bs, maxbs, L, H, seed):
    g = torch.Generator().manual_seed(seed)
    S = 10
    ibuf = torch.zeros(6, maxbs, dtype=torch.int32)
    ibuf[1] = torch.randperm(S, generator=g)[:maxbs].to(torch.int32)
    ibuf[3] = torch.randint(0, 5, (maxbs,), generator=g).to(torch.int32)  # every code, DENSE included
    ibuf[4] = torch.randint(0, 4, (maxbs,), generator=g).to(torch.int32)
    ibuf[5] = torch.randint(0, 4, (maxbs,), generator=g).to(torch.int32)  # period 0 is clamped to 1
    seq_pos = torch.randint(0, 9, (S,), generator=g).to(torch.int32)  # position 0: k = -1 (modulo sign)
    thr_slot = torch.randn(L, S, H, generator=g, dtype=torch.float64)
    ibuf, seq_pos, thr_slot = ibuf.to(DEVICE), seq_pos.to(DEVICE), thr_slot.to(DEVICE)
    got = step_inputs(ibuf, bs, seq_pos, thr_slot, H, CODES)
    want = ref.step_inputs(ibuf, bs, seq_pos, thr_slot, H, CODES)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    base, uses = step_decisions(got[0], ibuf[3, :bs], ibuf[4, :bs], ibuf[5, :bs], H)
    assert torch.equal(got[1], base) and torch.equal(got[2], uses)
