"""Byte arithmetic of the paged pool (torch-free): what a page, a slot and a row cost.

Accounting (``KVMemory``) counts K/V bytes only, so that live, logical and reserved bytes are
comparable: ``reserved_bytes = pages held x page_bytes`` with ``page_bytes = 2 * PAGE * D * dtype``.
The per-page metadata (slot position int32 + evict flag int8) and the per-slot tables are real
memory too; they are reported separately (``metadata_bytes``) and included in pool sizing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageLayout:
    page_size: int
    head_dim: int
    dtype_bytes: int
    num_layers: int
    num_kv_heads: int
    window: int
    max_pages_per_row: int

    @property
    def page_bytes(self) -> int:
        """K and V bytes of one page (what ``reserved_bytes`` counts per page held)."""
        return 2 * self.page_size * self.head_dim * self.dtype_bytes

    @property
    def page_meta_bytes(self) -> int:
        return self.page_size * (4 + 1)  # slot_pos int32 + slot_flag int8

    @property
    def rows_per_seq(self) -> int:
        return self.num_layers * self.num_kv_heads

    @property
    def slot_bytes(self) -> int:
        """Per sequence slot: block tables, ring, row lengths (int32)."""
        return self.rows_per_seq * (self.max_pages_per_row + self.window + 1 + 1) * 4 + 8

    def pages_that_fit(self, budget_bytes: int, num_slots: int) -> int:
        left = budget_bytes - num_slots * self.slot_bytes
        return max(0, left // (self.page_bytes + self.page_meta_bytes + 4))  # + free-stack entry

    def metadata_bytes(self, num_pages: int, num_slots: int) -> int:
        return num_pages * (self.page_meta_bytes + 4) + num_slots * self.slot_bytes
