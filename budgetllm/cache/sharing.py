"""Copy-on-write sharing of pages between sequence slots (kept cache states of the prefix tree).

``fork_slot`` gives a second slot the same rows as a first one: every page that a later step may
write is copied, every other page is shared and counted in ``refs``. A row is written only

* at the slot of a token inside the window (the ring: the last ``min(W1, seq_pos)`` tokens; the
  flag of the newest one, and the slot a flagged token leaving the window hands to a new token), and
* at the end of the row (``row_lens``: appended tokens; the partly filled last page),

so exactly the pages holding ring entries and the partly filled last page are copied; the other
pages hold unflagged tokens older than the window, which no rule ever writes again. Both slots can
then go on independently (docs/engine-layout.md). ``refs[page]`` counts the owners of a page beyond
the first; ``release_slots`` returns a page to the free stack only when its last owner lets go.

Torch ops (no Triton): one host sync per call, between engine steps, never inside a step.
"""

from __future__ import annotations

import torch

from budgetllm.kernels import PagedKV


def new_refs(kv: PagedKV) -> torch.Tensor:
    """Extra owners per page (0 = one owner or free): ``[num_pages] int32`` on the pool's device."""
    return torch.zeros(kv.num_pages, dtype=torch.int32, device=kv.k_pool.device)


def writable_pages(kv: PagedKV, slot: int, seq_len: int) -> torch.Tensor:
    """``[L, H, MAXP] bool``: the pages of ``slot``'s rows that a later step may write."""
    L, _, H, MAXP = kv.block_tables.shape
    P, W1 = kv.page_size, kv.ring.shape[-1]
    lens = kv.row_lens[:, slot].long()  # [L, H]
    ring = kv.ring[:, slot, :, :min(W1, seq_len)].long()  # row-local indices of the window's tokens
    tail = torch.where(lens % P != 0, lens // P, MAXP)  # the partly filled last page (MAXP = none)
    marks = torch.cat([ring // P, tail[..., None]], dim=-1).clamp(0, MAXP)
    wr = torch.zeros(L, H, MAXP + 1, dtype=torch.bool, device=lens.device)
    wr.scatter_(2, marks, True)
    return wr[..., :MAXP] & (kv.block_tables[:, slot] >= 0)


def fork_slot(kv: PagedKV, refs: torch.Tensor, src: int, dst: int, seq_len: int) -> int:
    """Make empty slot ``dst`` an independent copy of ``src`` (``seq_len`` = its tokens seen).

    Returns the pages copied; raises RuntimeError if the free stack cannot give them (the engine's
    host accounting makes sure it can)."""
    bt = kv.block_tables[:, src]  # [L, H, MAXP]
    wr = writable_pages(kv, src, seq_len)
    old = bt[wr].long()  # the host sync: how many pages to copy
    n = old.numel()
    top = int(kv.alloc_state[0])
    if top + n > kv.num_pages:
        raise RuntimeError(f"fork needs {n} free pages, the pool has {kv.num_pages - top}")
    new = kv.free_stack[top:top + n].long()
    kv.alloc_state[0] += n
    for pool in (kv.k_pool, kv.v_pool, kv.slot_pos, kv.slot_flag):
        pool[new] = pool[old]
    shared = bt[(bt >= 0) & ~wr].long()
    refs[shared] += 1  # a page belongs to one row: no duplicates here
    nbt = bt.clone()
    nbt[wr] = new.to(nbt.dtype)
    kv.block_tables[:, dst] = nbt
    kv.row_lens[:, dst] = kv.row_lens[:, src]
    kv.ring[:, dst] = kv.ring[:, src]
    kv.seq_pos[dst] = kv.seq_pos[src]
    kv.slot_oom[dst] = 0
    return n


def release_slots(kv: PagedKV, refs: torch.Tensor, slots: list[int]) -> int:
    """Release every row of ``slots``: a page goes back to the free stack once no slot holds it.
    Resets the slots like ``kernels.release_rows``. Returns the pages pushed."""
    if not slots:
        return 0
    dev = kv.k_pool.device
    idx = torch.tensor(slots, dtype=torch.long, device=dev)
    bt = kv.block_tables[:, idx]
    pages = bt[bt >= 0].long()  # the host sync
    if pages.numel():
        cnt = torch.bincount(pages, minlength=kv.num_pages).to(refs.dtype)
        left = refs - cnt  # owners left beyond the first; -1 = none left
        freed = ((cnt > 0) & (left < 0)).nonzero().squeeze(1).to(kv.free_stack.dtype)
        refs.copy_(torch.where(cnt > 0, left.clamp(min=0), refs))
        k = freed.numel()
        if k:
            at = kv.alloc_state[0].long() - k + torch.arange(k, device=dev)
            kv.free_stack[at] = freed
            kv.alloc_state[0] -= k
    else:
        k = 0
    kv.block_tables[:, idx] = -1
    kv.row_lens[:, idx] = 0
    kv.seq_pos[idx] = 0
    kv.slot_oom[idx] = 0
    return k
