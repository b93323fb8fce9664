"""The paged KV state (docs/engine-layout.md) and its device page allocator.

Allocator (device only, the host never syncs):

* ``free_stack [P] int32``: page ids; the free pages are ``free_stack[alloc_state[0]:]``.
* ``alloc_state [2] int32``: ``[0]`` = top = pages in use; ``[1]`` = failed allocations (sticky
  overflow counter, reset by the engine with ``alloc_state[1] = 0``).
* ``slot_oom [S] int32``: set to 1 for a sequence slot whose row failed to get a page.

Pop (store kernels): ``t = atomic_add(top, k)``; the pages are ``free_stack[t:t+k]``; when
``t + k > P`` the pop is undone (``atomic_add(top, -k)``), nothing is written, the overflow counter
and ``slot_oom`` are set. Push (``release_rows``): ``t = atomic_add(top, -k)`` then the pages are
written to ``free_stack[t-k:t]``. Pops and pushes never run in the same kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass
class PagedKV:
    """All device tensors of the paged DMS KV cache (see docs/engine-layout.md).

    Shapes: ``k_pool, v_pool [P, PAGE, D]``; ``slot_pos [P, PAGE] int32``; ``slot_flag [P, PAGE]
    int8``; ``block_tables [L, S, H, MAXP] int32`` (-1 = no page); ``row_lens [L, S, H] int32``;
    ``ring [L, S, H, W1] int32`` (W1 = window + 1); ``seq_pos [S] int32``; ``free_stack [P] int32``;
    ``alloc_state [2] int32``; ``slot_oom [S] int32``.
    """

    k_pool: torch.Tensor
    v_pool: torch.Tensor
    slot_pos: torch.Tensor
    slot_flag: torch.Tensor
    block_tables: torch.Tensor
    row_lens: torch.Tensor
    ring: torch.Tensor
    seq_pos: torch.Tensor
    free_stack: torch.Tensor
    alloc_state: torch.Tensor
    slot_oom: torch.Tensor

    @classmethod
    def allocate(cls, *, num_pages: int, page_size: int, head_dim: int, num_layers: int, max_slots: int,
                 num_kv_heads: int, max_pages_per_row: int, window: int, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str = "cuda") -> PagedKV:
        """Allocate an empty cache: every page free, every row empty, every ``seq_pos`` 0."""
        P, L, S, H = num_pages, num_layers, max_slots, num_kv_heads
        i32 = dict(dtype=torch.int32, device=device)
        return cls(
            k_pool=torch.zeros(P, page_size, head_dim, dtype=dtype, device=device),
            v_pool=torch.zeros(P, page_size, head_dim, dtype=dtype, device=device),
            slot_pos=torch.zeros(P, page_size, **i32),
            slot_flag=torch.zeros(P, page_size, dtype=torch.int8, device=device),
            block_tables=torch.full((L, S, H, max_pages_per_row), -1, **i32),
            row_lens=torch.zeros(L, S, H, **i32),
            ring=torch.zeros(L, S, H, window + 1, **i32),
            seq_pos=torch.zeros(S, **i32),
            free_stack=torch.arange(P, **i32),
            alloc_state=torch.zeros(2, **i32),
            slot_oom=torch.zeros(S, **i32),
        )

    @property
    def num_pages(self) -> int:
        return self.k_pool.shape[0]

    @property
    def page_size(self) -> int:
        return self.k_pool.shape[1]

    @property
    def head_dim(self) -> int:
        return self.k_pool.shape[2]

    @property
    def window(self) -> int:
        return self.ring.shape[-1] - 1

    def check(self) -> None:
        """Assert shapes, dtypes and contiguity (called by every launcher)."""
        P, PAGE, D = self.k_pool.shape
        L, S, H, _ = self.block_tables.shape
        assert self.v_pool.shape == (P, PAGE, D) and self.v_pool.dtype == self.k_pool.dtype
        assert self.slot_pos.shape == (P, PAGE) and self.slot_pos.dtype == torch.int32
        assert self.slot_flag.shape == (P, PAGE) and self.slot_flag.dtype == torch.int8
        assert self.block_tables.dtype == torch.int32
        assert self.row_lens.shape == (L, S, H) and self.row_lens.dtype == torch.int32
        assert self.ring.shape[:3] == (L, S, H) and self.ring.dtype == torch.int32
        assert self.seq_pos.shape == (S,) and self.seq_pos.dtype == torch.int32
        assert self.free_stack.shape == (P,) and self.free_stack.dtype == torch.int32
        assert self.alloc_state.shape == (2,) and self.alloc_state.dtype == torch.int32
        assert self.slot_oom.shape == (S,) and self.slot_oom.dtype == torch.int32
        for name, t in vars(self).items():
            assert t.is_contiguous(), f"{name} must be contiguous"
            assert t.device == self.k_pool.device, f"{name} on {t.device}, pool on {self.k_pool.device}"


def as_int8_flags(x: torch.Tensor) -> torch.Tensor:
    """Decisions / flags as int8 for the kernels: a free view of a bool tensor, a cast otherwise."""
    return x.view(torch.int8) if x.dtype == torch.bool else x.to(torch.int8)


def num_free_pages(kv: PagedKV) -> torch.Tensor:
    """Free pages as a 1-element int32 device tensor (no host sync; read it with non_blocking copies)."""
    return kv.num_pages - kv.alloc_state[:1]


@triton.jit
def release_rows_kernel(slot_ids, block_tables, row_lens, seq_pos, slot_oom, free_stack, alloc_state,
                        S, H, MAXP, BLOCK_P: tl.constexpr):
    i_r, i_lh = tl.program_id(0), tl.program_id(1)
    i_l, i_h = i_lh // H, i_lh % H
    s = tl.load(slot_ids + i_r)
    row = (i_l * S + s) * H + i_h
    for start in range(0, MAXP, BLOCK_P):
        o_p = start + tl.arange(0, BLOCK_P)
        m_p = o_p < MAXP
        # [BLOCK_P] pages of this row (-1 = none)
        b_pg = tl.load(block_tables + row * MAXP + o_p, mask=m_p, other=-1)
        m_v = b_pg >= 0
        n = tl.sum(m_v.to(tl.int32), 0)
        if n > 0:
            top = tl.atomic_add(alloc_state, -n)
            rank = tl.cumsum(m_v.to(tl.int32), 0) - 1
            tl.store(free_stack + top - n + rank, b_pg, mask=m_v)
            tl.store(block_tables + row * MAXP + o_p, tl.full([BLOCK_P], -1, tl.int32), mask=m_v)
    tl.store(row_lens + row, 0)
    if i_lh == 0:
        tl.store(seq_pos + s, 0)
        tl.store(slot_oom + s, 0)


def release_rows(kv: PagedKV, slot_ids: torch.Tensor) -> None:
    """Return every page of the given sequence slots (all layers and KV heads) to the free stack.

    Args:
        kv: the cache.
        slot_ids: ``[R] int32`` distinct sequence slots.

    Resets their rows (``block_tables = -1``, ``row_lens = 0``), ``seq_pos[slot] = 0`` and
    ``slot_oom[slot] = 0``. The overflow counter ``alloc_state[1]`` is left to the engine.
    """
    kv.check()
    assert slot_ids.dtype == torch.int32 and slot_ids.dim() == 1 and slot_ids.device == kv.k_pool.device
    L, S, H, MAXP = kv.block_tables.shape
    R = slot_ids.shape[0]
    if R == 0:
        return
    release_rows_kernel[(R, L * H)](
        slot_ids.contiguous(), kv.block_tables, kv.row_lens, kv.seq_pos, kv.slot_oom, kv.free_stack,
        kv.alloc_state, S, H, MAXP, BLOCK_P=min(1024, triton.next_power_of_2(MAXP)),
    )
