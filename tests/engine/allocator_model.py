"""A pure-Python model of the device page allocator and store-and-evict (for CPU scheduler tests).

Mirrors ``budgetllm.kernels.paged_kv`` / ``store_kv``: one free stack; every (slot, row) has its own
page list and length; a token either reuses the slot of a flagged token leaving the window (no
growth) or is appended (a new page when the row crosses a page boundary); when no page is left the
token is dropped and the slot is marked ``oom``; releasing a slot returns all its pages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from budgetllm.engine.scheduler import Batch, SlotStats


@dataclass
class RowModel:
    pages: list[int] = field(default_factory=list)
    n: int = 0


class AllocatorModel:
    def __init__(self, total_pages: int, num_slots: int, rows: int, page_size: int, window: int, seed: int = 0):
        self.total = total_pages
        self.free = list(range(total_pages))
        self.page_size, self.window = page_size, window
        self.rows = {s: [RowModel() for _ in range(rows)] for s in range(num_slots)}
        self.seen = dict.fromkeys(range(num_slots), 0)
        self.oom = dict.fromkeys(range(num_slots), False)
        self.rng = random.Random(seed)

    def _append(self, slot: int, row: RowModel, p: int, evict_rate: float) -> bool:
        reuse = p >= self.window + 1 and row.n > 0 and self.rng.random() < evict_rate
        if reuse:
            return True
        if row.n % self.page_size == 0:
            if not self.free:
                self.oom[slot] = True
                return False
            row.pages.append(self.free.pop())
        row.n += 1
        return True

    def store(self, slot: int, tokens: int, evict_rate: float) -> None:
        p0 = self.seen[slot]
        for row in self.rows[slot]:
            for i in range(tokens):
                if not self._append(slot, row, p0 + i, evict_rate):
                    break
        self.seen[slot] = p0 + tokens

    def release(self, slot: int) -> None:
        for row in self.rows[slot]:
            self.free.extend(row.pages)
            row.pages.clear()
            row.n = 0
        self.seen[slot] = 0
        self.oom[slot] = False

    def stats(self, slot: int) -> SlotStats:
        rows = self.rows[slot]
        return SlotStats(pages=sum(len(r.pages) for r in rows), live=sum(r.n for r in rows), oom=self.oom[slot])

    def run(self, batch: Batch, evict_rate: float) -> dict[int, SlotStats]:
        for s, n in zip(batch.seqs, batch.chunks, strict=True):
            self.store(s.slot, n, evict_rate)
        return {slot: self.stats(slot) for slot in self.rows}

    def check(self) -> None:
        owned = [pg for rows in self.rows.values() for r in rows for pg in r.pages]
        assert len(owned) + len(self.free) == self.total, "pages leaked"
        assert len(set(owned) | set(self.free)) == self.total, "a page is owned twice"
        for rows in self.rows.values():
            for r in rows:
                assert len(r.pages) == -(-r.n // self.page_size), "row pages do not match its length"
