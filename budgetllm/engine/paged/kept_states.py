"""Conversation reuse in the paged scheduler: kept cache states in the prefix tree. Torch-free.

Conversation reuse (``prefix``, engine/prefix_tree.py): a request keeps a copy-on-write twin of
its state once its prompt is cached, and its own slot when it ends; a new request whose prompt
extends a kept state under the same rule starts from a twin of it (or takes it over when the pool
is too tight for a twin). Kept states are released, least recently used first, before any request
waits for pages or is preempted.

:class:`KeptStates` is a part of :class:`~budgetllm.engine.paged.scheduler.Scheduler` (its base
class): it reads the scheduler's ``bm`` (BlockManager), ``prefix`` (PrefixTree), ``page_bytes``,
``running`` and ``device_ops``, and releases slots through ``Scheduler._release``. What the device
must do (fork a slot into a kept state, release one) is queued in ``device_ops`` like every other
slot operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from budgetllm.engine.paged.sequence import Sequence

if TYPE_CHECKING:
    from budgetllm.engine.paged.block_manager import BlockManager
    from budgetllm.engine.prefix_tree import PrefixTree


class KeptStates:
    """Keeping, matching and releasing kept states (the scheduler's prefix tree)."""

    bm: BlockManager
    prefix: PrefixTree
    page_bytes: int
    running: list
    device_ops: list

    def _evict_parked(self) -> bool:
        """Release the least recently used kept state (before queueing or preempting anyone). False if none."""
        e = self.prefix.pop_lru()
        if e is None:
            return False
        self._release(e.state)
        return True

    def _keep(self, kept: Sequence) -> None:
        """Put a state (a slot no request runs on) into the prefix tree, or release it."""
        ok, out = self.prefix.insert(kept.token_ids, kept.cache_key, kept, kept.pages_held * self.page_bytes)
        for e in out:
            self._release(e.state)
        if not ok:
            self._release(kept)

    def _room_for_twin(self, pages: int, extra: int = 0) -> bool:
        """A free slot and ``pages`` pages beyond the decode margin (LRU states released to make room)."""
        bm = self.bm
        while not bm.free_slots or bm.free_pages - pages - extra < bm.margin(len(self.running) + 1):
            if not self._evict_parked():
                return False
        return True

    def _keep_prompt_state(self, seq: Sequence) -> None:
        """Its prompt is cached: keep a copy-on-write twin of the state for later turns."""
        tokens = seq.token_ids[:seq.num_cached]
        if not self.prefix.enabled or seq.cache_key is None or self.prefix.has(tokens, seq.cache_key):
            return
        pages = self.bm.held.get(seq.seq_id, 0)
        if pages * self.page_bytes > self.prefix.capacity_bytes or not self._room_for_twin(pages):
            return
        kept = Sequence(tokens, 0, cache_key=seq.cache_key)
        self.bm.fork(seq, kept)
        self.device_ops.append(("fork", seq.slot, kept.slot, seq.num_cached))
        self._keep(kept)

    def _start_from_kept(self, s: Sequence, promised: int) -> bool:
        """Admit ``s`` on top of the longest kept state its prompt extends. False if none."""
        e = self.prefix.match(s.token_ids, s.cache_key)
        if e is None:
            return False
        kept, bm = e.state, self.bm
        pages = bm.held.get(kept.seq_id, 0)
        if self._room_for_twin(pages, promised) and e.node is not None:
            bm.fork(kept, s)  # the state stays kept for other branches of the conversation
            self.device_ops.append(("fork", kept.slot, s.slot, e.length))
        else:  # too tight for a twin: take the state over
            if e.node is not None:
                self.prefix.remove(e)
            if kept.slot is None:
                return False  # released while making room
            bm.transfer(kept, s)
        s.num_cached = s.reused = e.length
        self.prefix.count_hit(e)
        return True
