"""The end of an engine step in one launch: per-slot pages held, live entries and overflow flag, the
free-page count, and (decode) the advance of the step's positions.

The engine reads these once per step (its one readback). As torch ops they were ~13 small kernels at
the end of every decode step (``(lens + PAGE - 1) // PAGE`` summed, ``lens`` summed, the flags, the
free count, each written into a slice of the readback buffer, then ``seq_pos[slots] += inc``), each
a launch of a few µs at batch 1. One program per slot sums its L x H row lengths; the naive twin is
``kernels.reference.slot_stats`` (those torch ops).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from budgetllm.kernels.paged_kv import PagedKV


@triton.jit
def slot_stats_kernel(row_lens, slot_oom, alloc_state, out, seq_pos, slot_ids, inc, S, S_ALL, H, LH, NUM_PAGES, B,
                      PAGE: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    o = tl.arange(0, BLOCK)
    m = o < LH
    # row (l, s, h) of row_lens [L, S_ALL, H]
    b_n = tl.load(row_lens + (o // H) * (S_ALL * H) + s * H + o % H, mask=m, other=0).to(tl.int64)
    tl.store(out + s, tl.sum((b_n + PAGE - 1) // PAGE, 0))
    tl.store(out + S + s, tl.sum(b_n, 0))
    tl.store(out + 2 * S + s, tl.load(slot_oom + s).to(tl.int64))
    if s == 0:
        tl.store(out + 3 * S, (NUM_PAGES - tl.load(alloc_state)).to(tl.int64))
    if s < B:  # the step's rows advance their positions (no other program reads seq_pos)
        slot = tl.load(slot_ids + s)
        tl.store(seq_pos + slot, tl.load(seq_pos + slot) + tl.load(inc + s))


def slot_stats(kv: PagedKV, num_slots: int, page_size: int, out: torch.Tensor,
               advance: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Into ``out`` (int64, ``3 * num_slots + 1``): pages held per slot (``ceil(len / page_size)`` summed
    over its rows), live entries per slot, overflow flag per slot, free pages. ``advance``:
    ``(slot_ids [B] int32, inc [B] int32)``, distinct slots: ``seq_pos[slot_ids] += inc`` in the
    same launch. No host reads (CUDA-graph friendly)."""
    L, S_all, H = kv.row_lens.shape
    assert out.dtype == torch.int64 and out.numel() >= 3 * num_slots + 1 and out.is_contiguous()
    assert 0 < num_slots <= S_all and kv.row_lens.is_contiguous()
    slots, inc = advance if advance is not None else (kv.seq_pos, kv.seq_pos)
    B = slots.shape[0] if advance is not None else 0
    assert B <= num_slots and (advance is None or (slots.dtype == inc.dtype == torch.int32 and inc.shape == (B,)))
    slot_stats_kernel[(num_slots,)](
        kv.row_lens, kv.slot_oom, kv.alloc_state, out, kv.seq_pos, slots, inc, num_slots, S_all, H, L * H,
        kv.num_pages, B, PAGE=page_size, BLOCK=triton.next_power_of_2(L * H), num_warps=1 if L * H <= 256 else 4,
    )
