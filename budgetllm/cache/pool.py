"""Build the paged KV pool: size it from free GPU memory, allocate it, set up the padding slots.

Padding slots: a CUDA graph is captured for a fixed batch size, so a smaller batch is padded with
rows that must not touch the pool's free pages. Each padding slot holds one reserved page per row
and is frozen in a state where the store-and-evict rule (docs/engine-layout.md) always *reuses*
that page: ``seq_pos = W1``, ``row_len = 1``, every ring entry = index 0, and the padding row's
decision is forced to 1 (so step 1 flags index 0 and step 2 reuses it). Its ``seq_pos`` is never
advanced, so the state repeats every step and no page is ever allocated or leaked. Each padded
batch row needs its own padding slot (two programs on one row would race on the flag).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from budgetllm.cache.layout import PageLayout
from budgetllm.cache.sizing import DEFAULT_GPU_MEMORY_UTILIZATION, kv_pool_budget, too_small_error
from budgetllm.kernels import PagedKV


@dataclass
class PoolConfig:
    page_size: int = 16
    # gpu_memory_utilization: the fraction of the card's TOTAL memory this engine may use (sizing.py)
    memory_fraction: float = DEFAULT_GPU_MEMORY_UTILIZATION
    num_pages: int | None = None  # explicit size (tests, CPU); overrides memory_fraction
    max_seqs: int = 128
    padding_slots: int = 0  # extra slots for CUDA-graph padding rows
    headroom_bytes: int = 1 << 30  # left free for activations, logits and graphs


@dataclass
class PoolInfo:
    layout: PageLayout
    num_slots: int  # real sequence slots: 0 .. num_slots-1
    padding_slot0: int  # first padding slot
    usable_pages: int  # pages the block manager may hand out
    reserved_pages: int  # pages pinned by padding slots

    @property
    def total_bytes(self) -> int:
        return self.usable_pages * self.layout.page_bytes


def device_memory(device: torch.device) -> tuple[int, int, int]:
    """(total, free, held by this process) bytes of ``device``."""
    free, total = torch.cuda.mem_get_info(device)
    return int(total), int(free), int(torch.cuda.memory_reserved(device))


def size_pool(layout: PageLayout, cfg: PoolConfig, device: torch.device) -> int:
    """Pages that fit in ``gpu_memory_utilization`` (``memory_fraction``) of the device's total
    memory, less what this process already holds and a headroom (budgetllm.cache.sizing)."""
    if cfg.num_pages is not None:
        return int(cfg.num_pages)
    if device.type != "cuda":
        raise ValueError("num_pages must be given when the pool is not on a CUDA device")
    total, free, held = device_memory(device)
    budget = kv_pool_budget(total=total, free=free, held=held, utilization=cfg.memory_fraction,
                            headroom=cfg.headroom_bytes)
    pages = layout.pages_that_fit(budget, cfg.max_seqs + cfg.padding_slots)
    needed = layout.rows_per_seq * (2 + cfg.padding_slots)
    if pages < needed:
        raise too_small_error(pages=pages, needed=needed, page_bytes=layout.page_bytes, total=total, free=free,
                              held=held, utilization=cfg.memory_fraction, headroom=cfg.headroom_bytes)
    return pages


def build_pool(layout: PageLayout, cfg: PoolConfig, device: torch.device, dtype: torch.dtype
               ) -> tuple[PagedKV, PoolInfo]:
    num_pages = size_pool(layout, cfg, device)
    R = cfg.padding_slots * layout.rows_per_seq
    if num_pages - R < layout.rows_per_seq * 2:
        raise ValueError(f"a pool of {num_pages} pages is too small for {layout.rows_per_seq} rows per sequence")
    S = cfg.max_seqs + cfg.padding_slots
    kv = PagedKV.allocate(num_pages=num_pages, page_size=layout.page_size, head_dim=layout.head_dim,
                          num_layers=layout.num_layers, max_slots=S, num_kv_heads=layout.num_kv_heads,
                          max_pages_per_row=layout.max_pages_per_row, window=layout.window, dtype=dtype,
                          device=device)
    if cfg.padding_slots:
        _freeze_padding_slots(kv, cfg.max_seqs, cfg.padding_slots)
    info = PoolInfo(layout, cfg.max_seqs, cfg.max_seqs, num_pages - R, R)
    return kv, info


def _freeze_padding_slots(kv: PagedKV, first: int, count: int) -> None:
    L, _, H, _ = kv.block_tables.shape
    R = count * L * H
    pages = kv.free_stack[:R].clone().view(L, count, H)  # popped from the bottom of the stack
    kv.alloc_state[0] = R
    sl = slice(first, first + count)
    kv.block_tables[:, sl, :, 0] = pages
    kv.row_lens[:, sl] = 1
    kv.ring[:, sl] = 0
    kv.seq_pos[sl] = kv.window + 1
    kv.slot_flag[pages.flatten().long(), 0] = 1
    kv.slot_pos[pages.flatten().long(), 0] = 0
