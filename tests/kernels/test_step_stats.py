"""slot_stats (kernels/step_stats.py: the end of an engine step in one launch) against its naive twin,
on fresh random row lengths, overflow flags and allocator states: integers, so equal exactly."""

import pytest
import torch
from kvtestlib import DEVICE, clone, make_kv

from budgetllm.kernels import reference as ref
from budgetllm.kernels.step_stats import slot_stats


@pytest.mark.parametrize(("L", "H", "S", "page", "advance", "seed"), [
    (2, 2, 5, 4, False, 0), (3, 4, 7, 16, True, 1), (5, 3, 6, 3, True, 2),
])
def test_slot_stats_equals_the_torch_ops(L, H, S, page, advance, seed):
    g = torch.Generator().manual_seed(seed)
    kv = make_kv(L=L, H=H, S=S + 2, PAGE=page, seed=seed)  # two more slots than counted (padding slots)
    kv.row_lens.copy_(torch.randint(0, 60, kv.row_lens.shape, generator=g).to(torch.int32))
    kv.slot_oom.copy_((torch.rand(kv.slot_oom.shape, generator=g) < 0.3).to(kv.slot_oom.dtype))
    kv.alloc_state[0] = int(torch.randint(0, kv.num_pages, (1,), generator=g))
    kv.seq_pos.copy_(torch.randint(0, 100, kv.seq_pos.shape, generator=g).to(torch.int32))
    kv_r = clone(kv)
    adv = None
    if advance:  # a step's rows, one of them a padding slot past the counted ones
        slots = torch.tensor([3, 0, S + 1], dtype=torch.int32, device=DEVICE)
        adv = (slots, torch.tensor([1, 1, 0], dtype=torch.int32, device=DEVICE))
    out = torch.full((3 * S + 1,), -1, dtype=torch.int64, device=DEVICE)
    want = torch.full_like(out, -2)
    slot_stats(kv, S, page, out, adv)
    ref.slot_stats(kv_r, S, page, want, adv)
    assert torch.equal(out, want)
    assert torch.equal(kv.seq_pos, kv_r.seq_pos) and torch.equal(kv.row_lens, kv_r.row_lens)
