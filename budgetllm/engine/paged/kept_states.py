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
slot operation; :meth:`KeptStates.apply_device_ops` runs it (the engine calls it before each batch)
and records the reuse path's phases of the request it serves (:func:`mark`).

Phases (``GenerationRequest.phases``, seconds from the request's start, set through the payload's
``mark``; the engine loop adds ``scheduled`` / ``launched`` / ``read``): ``matched`` (the prefix
tree found its kept state), ``released`` (kept states pushed out to make room, released on the
device), ``forked`` (its twin of the kept state made on the device), ``delivered`` (its first token
handed to the caller: engine/paged/handle.py) and ``kept`` (its prompt-end state kept, a fork made
after the first token went out: :meth:`KeptStates.keep_deferred`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from budgetllm.engine.paged.sequence import SeqStatus, Sequence
from budgetllm.engine.prefix_tree import common_prefix

if TYPE_CHECKING:
    from budgetllm.engine.paged.block_manager import BlockManager
    from budgetllm.engine.prefix_tree import PrefixTree


def mark(seq: Sequence | None, phase: str) -> None:
    """Record ``phase`` now for the request behind ``seq`` (its payload's ``mark``; the first time only)."""
    m = getattr(getattr(seq, "payload", None), "mark", None)
    if m is not None:
        m(phase)


class KeptStates:
    """Keeping, matching and releasing kept states (the scheduler's prefix tree)."""

    bm: BlockManager
    prefix: PrefixTree
    page_bytes: int
    running: list
    device_ops: list
    min_shared: int
    fork_marks: dict  # dst slot of a queued fork -> (the request it serves, its phase)
    keep_later: list  # requests whose prompt-end state is kept by keep_deferred()

    def apply_device_ops(self, runner) -> None:
        """Run the queued device work in order on ``runner`` (its ``release(slots)`` and
        ``fork(src, dst, tokens)``): consecutive releases in one call, forks between them."""
        ops = self.device_ops
        if not ops:
            return
        batch: list[int] = []
        released = False
        for op in ops:
            if op[0] == "release":
                batch.append(op[1])
                continue
            if batch:
                runner.release(batch)
                batch, released = [], True
            runner.fork(*op[1:4])
            seq, phase = self.fork_marks.pop(op[2], (None, None))
            if phase is not None:
                if released and phase == "forked":
                    mark(seq, "released")
                mark(seq, phase)
        runner.release(batch)
        ops.clear()
        self.fork_marks.clear()

    def keep_deferred(self) -> None:
        """Keep the prompt-end states that ``after_step(..., defer_keeps=True)`` left for later (the
        engine calls this once the step's first tokens are handed out: the twin's bookkeeping and its
        fork are not on the time to first token). A request that ended in the step kept its state
        with its slot (``finish(keep=True)``)."""
        later, self.keep_later = self.keep_later, []
        for s in later:
            if s.slot is not None and s.num_cached and s.status is SeqStatus.RUNNING:
                self._keep_prompt_state(s)

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
        self.fork_marks[kept.slot] = (seq, "kept")
        self._keep(kept)

    def _start_from_kept(self, s: Sequence, promised: int) -> bool:
        """Admit ``s`` on top of the longest kept state its prompt extends. False if none, or if ``s``
        ran out of pages before (a twin the pool could not give is flagged like that:
        cache/sharing.py; the retry recomputes from scratch)."""
        if s.prefill_overflows:
            return False
        e = self.prefix.match(s.token_ids, s.cache_key)
        if e is None:
            return False
        mark(s, "matched")
        kept, bm = e.state, self.bm
        pages = bm.held.get(kept.seq_id, 0)
        if self._room_for_twin(pages, promised) and e.node is not None:
            bm.fork(kept, s)  # the state stays kept for other branches of the conversation
            self.device_ops.append(("fork", kept.slot, s.slot, e.length))
            self.fork_marks[s.slot] = (s, "forked")
        else:  # too tight for a twin: take the state over
            if e.node is not None:
                self.prefix.remove(e)
            if kept.slot is None:
                return False  # released while making room
            bm.transfer(kept, s)
        s.num_cached = s.reused = e.length
        self.prefix.count_hit(e)
        return True

    def _hand_over_to_twin(self, seq: Sequence) -> bool:
        """``seq`` ends in the step that kept its prompt state (a 1-token call): the twin's fork is
        still queued and would copy the very state ``seq`` ends with. The twin takes ``seq``'s slot
        instead and the fork is dropped (no copy, no host sync on the call's path)."""
        ops = self.device_ops
        for i in range(len(ops) - 1, -1, -1):
            op = ops[i]
            if op[0] != "fork" or op[1] != seq.slot or op[3] != seq.num_cached:
                continue
            twin = next((e.state for e in self.prefix.entries() if e.state.slot == op[2]), None)
            if twin is None or any(o[1] in (op[1], op[2]) for o in ops[i + 1:]):
                return False
            del ops[i]
            self.fork_marks.pop(op[2], None)
            self.bm.release(twin)  # its slot was never filled on the device
            self.bm.transfer(seq, twin)
            return True
        return False

    def _wait_for_shared_prefix(self, s: Sequence, seqs: list, chunks: list) -> bool:
        """Whether ``s`` waits for a running prefill that shares its first tokens: that one keeps a
        state where the two part (its chunk in this batch stops there), and ``s`` is admitted on a
        twin of it next (``_start_from_kept``). A state cannot be rolled back, so only a prefill
        still short of the shared length is waited for."""
        if not self.prefix.enabled or s.cache_key is None or len(s.token_ids) <= self.min_shared:
            return False
        head = s.token_ids[:self.min_shared]
        for r in self.running:
            if r.cache_key != s.cache_key or not r.is_prefilling or r.token_ids[:self.min_shared] != head:
                continue
            lo, hi = self.min_shared, min(len(s.token_ids) - 1, r.num_prompt)
            if hi < lo:
                continue
            shared = common_prefix(s.token_ids[:hi], r.token_ids[:hi], known=lo)
            if shared < self.min_shared or shared <= r.num_cached:
                continue
            if self.prefix.has(s.token_ids[:shared], s.cache_key):
                return False  # already kept: admitted on it now
            if shared not in r.keep_at:
                r.keep_at = tuple(sorted((*r.keep_at, shared)))
            if r in seqs:  # its chunk in this batch stops at the shared length
                i = seqs.index(r)
                chunks[i] = min(chunks[i], shared - r.num_cached)
            return True
        return False
