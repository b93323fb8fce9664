"""A pure-Python model of the device page allocator and store-and-evict (for CPU scheduler tests).

Mirrors ``budgetllm.kernels.paged_kv`` / ``store_kv``: one free stack; every (slot, row) has its own
page list and length; a token either reuses the slot of a flagged token leaving the window (no
growth) or is appended (a new page when the row crosses a page boundary); when no page is left the
token is dropped and the slot is marked ``oom``; releasing a slot returns all its pages.

Copy-on-write forks (``budgetllm.cache.sharing``): a fork copies each row's last pages (those a later
step may write: the window and the partly filled last page) and shares the rest; every page counts
its holders, and a release returns a page only when its last holder lets go.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from budgetllm.engine.paged.scheduler import Batch, SlotStats


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
        self.holders: dict[int, int] = {}  # page -> slots' rows holding it

    def _append(self, slot: int, row: RowModel, p: int, evict_rate: float) -> bool:
        reuse = p >= self.window + 1 and row.n > 0 and self.rng.random() < evict_rate
        if reuse:
            return True
        if row.n % self.page_size == 0:
            if not self.free:
                self.oom[slot] = True
                return False
            page = self.free.pop()
            self.holders[page] = 1
            row.pages.append(page)
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
            for page in row.pages:
                self.holders[page] -= 1
                if self.holders[page] == 0:
                    assert page not in self.free, "a page freed twice"
                    del self.holders[page]
                    self.free.append(page)
            row.pages.clear()
            row.n = 0
        self.seen[slot] = 0
        self.oom[slot] = False

    def fork(self, src: int, dst: int, seq_len: int) -> None:
        assert seq_len == self.seen[src] and all(r.n == 0 for r in self.rows[dst]), "fork into a used slot"
        copied = -(-(self.window + 1) // self.page_size) + 1
        for a, b in zip(self.rows[src], self.rows[dst], strict=True):
            k = min(copied, len(a.pages))
            shared = a.pages[:len(a.pages) - k]
            assert len(self.free) >= k, "the host let a fork run the pool dry"
            fresh = [self.free.pop() for _ in range(k)]
            for page in shared:
                self.holders[page] += 1
            for page in fresh:
                self.holders[page] = 1
            b.pages, b.n = shared + fresh, a.n
        self.seen[dst] = self.seen[src]

    def apply(self, ops: list) -> None:
        """The scheduler's device work, in order."""
        for op in ops:
            if op[0] == "release":
                self.release(op[1])
            else:
                self.fork(*op[1:])
        ops.clear()

    def pending_free(self, ops: list) -> int:
        """Pages the queued ops would give back (releases only), without applying them."""
        return 0 if not ops else len({pg for op in ops if op[0] == "release" for r in self.rows[op[1]]
                                      for pg in r.pages if self.holders[pg] == 1})

    def stats(self, slot: int) -> SlotStats:
        rows = self.rows[slot]
        return SlotStats(pages=sum(len(r.pages) for r in rows), live=sum(r.n for r in rows), oom=self.oom[slot])

    def run(self, batch: Batch, evict_rate: float) -> dict[int, SlotStats]:
        for s, n in zip(batch.seqs, batch.chunks, strict=True):
            self.store(s.slot, n, evict_rate)
        return {slot: self.stats(slot) for slot in self.rows}

    def check(self) -> None:
        owned = [pg for rows in self.rows.values() for r in rows for pg in r.pages]
        assert len(set(self.free)) == len(self.free), "a page freed twice"
        assert not set(owned) & set(self.free), "a held page is free"
        assert len(set(owned)) + len(self.free) == self.total, "pages leaked"
        counts: dict[int, int] = {}
        for pg in owned:
            counts[pg] = counts.get(pg, 0) + 1
        assert counts == self.holders, "holder counts are wrong"
        for rows in self.rows.values():
            for r in rows:
                assert len(r.pages) == -(-r.n // self.page_size), "row pages do not match its length"
