"""What the runner hands back and how it lets go: the step's readback (tokens, per-slot stats, free
pages), started asynchronously and read later (:class:`AsyncReadback`), and the helpers that make a
failed construction release what it had allocated."""

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


class AsyncReadback:
    """The runner's read buffer (device int64: step tokens [maxbs], then per-slot pages / live / oom
    [3 * slots], then the free-page count) copied to the host without waiting: :meth:`start` enqueues
    the copy into one of two pinned host buffers and records an event behind it; :meth:`finish` waits
    for that event only, so a step launched after ``start`` keeps the GPU busy while the host reads.

    Two buffers, used in turn: at most two readbacks are outstanding (the step being read and the one
    launched ahead of it, engine/paged/launch_ahead.py), and a buffer is reused only after the host
    has waited for a later event on the same stream. On the CPU the copy is synchronous."""

    def __init__(self, read_buf: torch.Tensor, max_rows: int, num_slots: int):
        self.dev, self.maxbs, self.S = read_buf, max_rows, num_slots
        cuda = read_buf.device.type == "cuda"
        self.host = [torch.zeros(read_buf.shape, dtype=read_buf.dtype, pin_memory=cuda) for _ in range(2)]
        self.events = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self.turn = 0

    def start(self, rows: int) -> tuple[int, int]:
        """Enqueue the copy of the buffer as it will be once the work enqueued so far has run; the
        handle for :meth:`finish` (its first ``rows`` tokens are the step's)."""
        k = self.turn
        self.turn ^= 1
        self.host[k].copy_(self.dev, non_blocking=self.events is not None)
        if self.events is not None:
            self.events[k].record()
        return k, rows

    def finish(self, pending: tuple[int, int]) -> Readback:
        """Wait for that copy (not for anything enqueued after it) and parse it."""
        k, rows = pending
        if self.events is not None:
            self.events[k].synchronize()
        host = self.host[k].tolist()
        S, m = self.S, self.maxbs
        return Readback(host[:rows], _SlotView(host[m:m + 3 * S], S), host[-1])


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
