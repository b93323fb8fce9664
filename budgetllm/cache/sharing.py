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

Torch ops (no Triton) and no host sync (issue 12: they run on a reused turn's path to its first
token): a fork copies a fixed-size candidate list (``min(W1, seq_len) + 1`` pages per row, the
duplicates and pages beyond the row turned into harmless self-copies), a release works on the
released rows' pages only (sorted, counted per page), never on every page of the pool.
"""

from __future__ import annotations

import torch

from budgetllm.kernels import PagedKV


def new_refs(kv: PagedKV) -> torch.Tensor:
    """Extra owners per page (0 = one owner or free): ``[num_pages] int32`` on the pool's device."""
    return torch.zeros(kv.num_pages, dtype=torch.int32, device=kv.k_pool.device)


def _candidates(kv: PagedKV, slot: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[L, H, K]`` row-local page indices a later step may write (the window's pages and the last
    page; K = min(W1, seq_len) + 1), sorted per row; which of them are real and first of their kind
    (duplicates, and a last page index that is past the row, are False); and the rows' pages
    ``[L, H, MAXP + 1]`` with a column of -1 (where the left-out candidates point)."""
    P, W1 = kv.page_size, kv.ring.shape[-1]
    bt = kv.block_tables[:, slot]
    # rows have no holes: lens // P is the partly filled last page, or (a full last page) the first
    # page past the row, which holds -1 (or is MAXP: the extra column): left out below
    marks = torch.cat([kv.ring[:, slot, :, :min(W1, seq_len)], kv.row_lens[:, slot, :, None]], dim=-1)
    marks = (marks // P).sort(dim=-1).values.long()
    btp = torch.nn.functional.pad(bt, (0, 1), value=-1)
    first = marks != torch.nn.functional.pad(marks, (1, 0), value=-1)[..., :-1]
    return marks, first & (btp.gather(2, marks) >= 0), btp


def writable_pages(kv: PagedKV, slot: int, seq_len: int) -> torch.Tensor:
    """``[L, H, MAXP] bool``: the pages of ``slot``'s rows that a later step may write."""
    marks, ok, btp = _candidates(kv, slot, seq_len)
    wr = torch.zeros_like(btp, dtype=torch.bool)
    wr.scatter_(2, torch.where(ok, marks, btp.shape[-1] - 1), True)
    return wr[..., :-1]


def fork_slot(kv: PagedKV, refs: torch.Tensor, src: int, dst: int, seq_len: int) -> torch.Tensor:
    """Make empty slot ``dst`` an independent copy of ``src`` (``seq_len`` = its tokens seen).

    No host sync: the pages to copy are a fixed-size candidate list per row. The engine's host
    accounting makes sure the free stack can give them; if it could not, ``dst`` is left empty with
    its overflow flag set (``slot_oom``, copied by later forks of it), so the request on it is
    preempted and recomputed rather than run on a wrong cache. Returns the pages copied (a device
    tensor ``[1]``)."""
    MAXP = kv.block_tables.shape[-1]
    bt = kv.block_tables[:, src]  # [L, H, MAXP]
    marks, ok, btp = _candidates(kv, src, seq_len)  # [L, H, K]
    old = btp.gather(2, marks)
    flat = ok.flatten()
    rank = flat.cumsum(0) - 1  # the copy's place among the pages taken
    n = rank[-1:] + 1  # pages to copy (a device tensor)
    top = kv.alloc_state[:1]
    fits = top + n <= kv.num_pages  # [1] bool
    take = flat & fits
    new = kv.free_stack[(top + rank).clamp(0, kv.num_pages - 1)]
    pad = bt.amax().clamp(min=0)  # a page src holds (never a free one): the left-out copy onto itself
    o = torch.where(take, old.flatten(), pad)
    d = torch.where(take, new, pad)
    for pool in (kv.k_pool, kv.v_pool, kv.slot_pos, kv.slot_flag):
        pool[d] = pool[o]
    kv.alloc_state[:1] += torch.where(fits, n, 0).to(kv.alloc_state.dtype)
    # the new pages into dst's table; the extra column takes the writes of the candidates left out
    nbt = btp.scatter(2, torch.where(ok, marks, MAXP), torch.where(take, d, o).view_as(marks).to(btp.dtype))
    nbt = nbt[..., :MAXP]
    shared = (bt >= 0) & (nbt == bt) & fits  # held and not copied (a copy gets a free page: never equal)
    refs.index_add_(0, bt.flatten().clamp(min=0), shared.flatten().to(refs.dtype))
    kv.block_tables[:, dst] = torch.where(fits, nbt, -1)
    kv.row_lens[:, dst] = torch.where(fits, kv.row_lens[:, src], 0)
    kv.ring[:, dst] = kv.ring[:, src]
    kv.seq_pos[dst:dst + 1] = torch.where(fits, kv.seq_pos[src:src + 1], 0)
    kv.slot_oom[dst:dst + 1] = kv.slot_oom[src:src + 1] | (~fits).to(kv.slot_oom.dtype)
    return torch.where(fits, n, 0)


def release_slots(kv: PagedKV, refs: torch.Tensor, slots: list[int]) -> torch.Tensor | None:
    """Release every row of ``slots``: a page goes back to the free stack once no slot holds it.
    Resets the slots like ``kernels.release_rows``. No host sync; only the released rows' pages
    are touched (sorted, each page's holders among them counted off its ``refs``). Returns the
    pages pushed (a device tensor ``[]``)."""
    if not slots:
        return None
    lo = min(slots)
    if sorted(slots) == list(range(lo, lo + len(slots))):
        idx = slice(lo, lo + len(slots))  # a view: no index tensor to copy to the device
    else:
        idx = torch.tensor(slots, dtype=torch.long).to(kv.k_pool.device, non_blocking=True)
    pages = kv.block_tables[:, idx].flatten().long().sort().values  # -1 (no page) first
    valid = pages >= 0
    pg = pages.clamp(min=0)
    refs.index_add_(0, pg, -valid.to(refs.dtype))  # owners beyond the first, minus the holders let go
    first = valid.clone()
    first[1:] &= pages[1:] != pages[:-1]
    left = refs[pg]
    gone = first & (left < 0)  # no owner left: back to the free stack (once per page)
    refs[pg] = left.clamp(min=0)  # equal values for equal pages: no conflicting writes
    k = gone.sum()
    top = kv.alloc_state[:1].long()
    spread = torch.arange(pages.numel(), device=pages.device) % kv.free_stack.numel()
    at = torch.where(gone, top - k + gone.cumsum(0) - 1, spread)
    # a push by accumulation: the freed pages add their difference to what their place holds, the
    # rest add 0 at places spread out (an integer atomic add of 0 changes nothing, so a collision with
    # a freed page's place is harmless); index_add_ is atomic: index_put_(accumulate=True) sorts the
    # indices on CUDA (10 ms for a 7K-token row's 24K pages on an H200 with every 0 at place 0)
    delta = torch.where(gone, pg - kv.free_stack[at].long(), 0).to(kv.free_stack.dtype)
    kv.free_stack.index_add_(0, at, delta)
    kv.alloc_state[:1] -= k.to(kv.alloc_state.dtype)
    kv.block_tables[:, idx] = -1
    kv.row_lens[:, idx] = 0
    kv.seq_pos[idx] = 0
    kv.slot_oom[idx] = 0
    return k
