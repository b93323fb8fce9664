"""Host mirror of the GPU page pool: sequence slots, pages held, admission and the decode margin. Torch-free.

The pages themselves are allocated on the GPU by the store kernels (a device free stack with an
atomic counter, ``budgetllm.kernels.paged_kv``), so a decode step needs no host round trip. The host
cannot know in advance how many pages a step takes (that depends on the eviction decisions made
inside the step), so it keeps:

* ``held[seq]``: pages each sequence holds, read back from the GPU after every step (the sum over its
  rows of ceil(row_len / page_size); rows never have holes, so that is exact);
* ``free_pages = total - sum(held)``, which equals the device's free count after each readback;
* a **decode margin** of one page per row per step: a decode step appends one token to every row of
  every running sequence, so it can take at most one new page per row. Before a decode step the
  scheduler preempts the newest sequences until ``free_pages >= margin``; the device allocator then
  never runs dry inside a step.

Admission uses the *expected* size, not the dense worst case (which would defeat compression):
a row keeps the last ``window + 1`` tokens plus about 1/CR of the older ones
(:func:`expected_row_entries`), plus one page of slack per row. A request whose expected size at
``prompt + max_new_tokens`` does not fit in the whole pool (with the margin) even alone is refused
with :class:`PoolExhaustedError`. When the estimate is wrong the device says so (``slot_oom``) and
the sequence is preempted and retried with the dense bound for its prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from budgetllm.engine.paged.sequence import Sequence, expected_row_entries, pages_for
from budgetllm.errors import PoolExhaustedError


@dataclass
class PoolGeometry:
    total_pages: int  # usable pages (the pool minus pages reserved for padding rows)
    num_slots: int  # sequence slots (max concurrent sequences)
    rows_per_seq: int  # num_layers * num_kv_heads
    page_size: int
    window: int


@dataclass
class BlockManager:
    geo: PoolGeometry
    held: dict[int, int] = field(default_factory=dict)  # seq_id -> pages held
    slot_owner: dict[int, int] = field(default_factory=dict)  # slot -> seq_id
    _free_slots: list[int] = field(default_factory=list)
    _used: int = 0  # == sum(held.values()), kept as a counter: pool_stats() reads it from other threads

    def __post_init__(self) -> None:
        self._free_slots = list(range(self.geo.num_slots - 1, -1, -1))  # pop() gives slot 0 first

    # -- facts ------------------------------------------------------------------------------
    @property
    def free_pages(self) -> int:
        return self.geo.total_pages - self._used

    @property
    def used_pages(self) -> int:
        return self._used

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def margin(self, num_seqs: int) -> int:
        """Pages a decode step over ``num_seqs`` sequences may take at most (one per row)."""
        return num_seqs * self.geo.rows_per_seq

    def expected_pages(self, seq: Sequence, tokens: int) -> int:
        """Pages ``seq`` is expected to hold once ``tokens`` tokens are cached (one page of slack per row)."""
        g = self.geo
        if seq.prefill_overflows:  # the estimate was wrong once: assume nothing is evicted
            per_row = pages_for(tokens, g.page_size)
        else:
            per_row = pages_for(expected_row_entries(tokens, g.window, seq.expected_cr), g.page_size) + 1
        return g.rows_per_seq * min(per_row, pages_for(tokens, g.page_size))

    def check_fits_alone(self, seq: Sequence) -> None:
        """Raise PoolExhaustedError if ``seq`` could not run even with the whole pool to itself."""
        need = self.expected_pages(seq, seq.total_tokens) + self.margin(1)
        if need > self.geo.total_pages:
            raise PoolExhaustedError(
                f"the request needs about {need} KV pages (prompt {seq.num_prompt} + max {seq.max_new_tokens} "
                f"new tokens at compression {seq.expected_cr:g}, expected size plus the window per row); "
                f"the pool has {self.geo.total_pages}. Lower max_tokens, raise compression, or give the "
                "engine more memory (memory_fraction / num_pages)")

    def prefill_need(self, seq: Sequence, chunk: int) -> int:
        """Extra pages a prefill chunk of ``chunk`` tokens is expected to take."""
        return max(0, self.expected_pages(seq, seq.num_cached + chunk) - self.held.get(seq.seq_id, 0))

    # -- ownership --------------------------------------------------------------------------
    def assign_slot(self, seq: Sequence) -> int:
        if not self._free_slots:
            raise RuntimeError("no free sequence slot")
        slot = self._free_slots.pop()
        self.slot_owner[slot] = seq.seq_id
        self.held[seq.seq_id] = 0
        seq.slot = slot
        seq.pages_held = 0
        return slot

    def release(self, seq: Sequence) -> int | None:
        """Forget ``seq``'s pages and free its slot (the caller releases the device rows). Returns the slot."""
        slot = seq.slot
        if slot is None:
            return None
        assert self.slot_owner.get(slot) == seq.seq_id, "slot owned by another sequence"
        del self.slot_owner[slot]
        self._used -= self.held.pop(seq.seq_id, 0)
        self._free_slots.append(slot)
        seq.slot = None
        seq.pages_held = 0
        seq.live_entries = 0
        return slot

    def transfer(self, old: Sequence, new: Sequence) -> None:
        """``new`` takes over ``old``'s slot and pages (prefix reuse); ``old`` holds nothing after."""
        slot = old.slot
        assert slot is not None and self.slot_owner.get(slot) == old.seq_id
        self.slot_owner[slot] = new.seq_id
        self.held[new.seq_id] = self.held.pop(old.seq_id)
        new.slot, new.pages_held, new.live_entries = slot, old.pages_held, old.live_entries
        old.slot, old.pages_held, old.live_entries = None, 0, 0

    def fork(self, src: Sequence, dst: Sequence) -> int:
        """``dst`` gets a free slot that the engine fills with a copy-on-write twin of ``src``'s rows.

        The host counts the twin's pages in full (shared pages count once per holder), so
        ``free_pages`` never exceeds the device's free count: admission and the decode margin stay
        safe, only conservative while states are shared (cache/sharing.py)."""
        slot = self.assign_slot(dst)
        pages = self.held.get(src.seq_id, 0)
        self.held[dst.seq_id] = pages
        self._used += pages
        dst.pages_held, dst.live_entries = pages, src.live_entries
        return slot

    def sync(self, seq: Sequence, pages: int, live: int) -> None:
        """Record what the GPU says ``seq`` holds after a step."""
        if seq.slot is None or seq.seq_id not in self.held:
            return
        self._used += int(pages) - self.held[seq.seq_id]
        self.held[seq.seq_id] = int(pages)
        seq.pages_held = int(pages)
        seq.live_entries = int(live)
