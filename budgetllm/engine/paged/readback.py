"""What the runner hands back and how it lets go: the step's readback (tokens, per-slot stats, free
pages) and the helpers that make a failed construction release what it had allocated."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from budgetllm.engine.paged.scheduler import SlotStats


@dataclass
class Readback:
    tokens: list[int]
    stats: _SlotView  # .get(slot) -> SlotStats
    free_pages: int


class _SlotView:
    """``stats.get(slot)`` over the raw readback (SlotStats built only for the slots asked about)."""

    def __init__(self, rest: list[int], num_slots: int):
        self.rest, self.S = rest, num_slots

    def get(self, slot: int | None) -> SlotStats | None:
        if slot is None or not 0 <= slot < self.S:
            return None
        r, S = self.rest, self.S
        return SlotStats(r[slot], r[S + slot], bool(r[2 * S + slot]))

    def __getitem__(self, slot: int) -> SlotStats:
        return self.get(slot)


def without_frames(e: BaseException) -> BaseException:
    """``e`` (and its chained exceptions) without their frames, which hold the failed runner's locals
    (pool, model, graphs); the traceback is kept as text in a note."""
    import traceback

    e.add_note("".join(traceback.format_exception(e)).rstrip())
    x, seen = e, set()
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        x.__traceback__ = None
        x = x.__cause__ or x.__context__
    return e


def free_cached() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
