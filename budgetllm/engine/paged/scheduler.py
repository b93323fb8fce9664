"""Continuous batching for the paged engine: admission, chunked prefill, decode, preemption. Torch-free.

Each engine step is either a *prefill* batch (chunks of pending tokens of several sequences, at most
``max_prefill_tokens`` in all: new prompts, later chunks of long prompts, or the recompute of a
preempted sequence) or a *decode* batch (one token for every sequence whose next step is a sample).
Prefill and decode alternate while both have work, so a long prompt never stalls running streams
for more than one chunk.

Pages are checked by :class:`BlockManager`: admission by expected size, the decode margin of one
page per row, and preemption (recompute) of the newest sequence when the margin would be crossed
or when the device reports that a row ran out of pages. What the device must do to the slots
(release a slot's rows, fork a slot into a kept state) is queued in order in ``device_ops``; the
engine applies it on the GPU before its next batch.

Conversation reuse (kept states in ``prefix``, engine/prefix_tree.py) is :class:`KeptStates`
(engine/paged/kept_states.py), a part of this class.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from budgetllm.engine.paged.block_manager import BlockManager
from budgetllm.engine.paged.kept_states import KeptStates
from budgetllm.engine.paged.sequence import SeqStatus, Sequence
from budgetllm.engine.prefix_tree import PrefixTree
from budgetllm.errors import PoolExhaustedError


@dataclass
class Batch:
    kind: str  # "prefill" | "decode"
    seqs: list[Sequence]
    chunks: list[int]  # tokens fed per sequence (decode: 1)

    @property
    def num_tokens(self) -> int:
        return sum(self.chunks)


@dataclass
class SlotStats:
    """What the GPU says about one slot after a step."""

    pages: int
    live: int
    oom: bool = False


@dataclass
class Scheduler(KeptStates):
    bm: BlockManager
    max_prefill_tokens: int = 4096
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)  # admission order: the newest is last
    # ("release", slot) | ("fork", src slot, dst slot, tokens): device work before the next batch, in order
    device_ops: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (seq, error) the engine must report
    prefix: PrefixTree = field(default_factory=PrefixTree)  # kept cache states (off: capacity 0)
    page_bytes: int = 1  # bytes of one page: the prefix tree is bounded in bytes
    max_running: int | None = None  # sequences running at once (default: every slot)
    num_preemptions: int = 0
    # requests that start with the same >= min_shared tokens as a running prefill wait for its state
    # there (kept on the way) and continue from a twin: concurrent prompts share their prefix's pages
    min_shared: int = 32
    fork_marks: dict = field(default_factory=dict)  # queued fork's dst slot -> (request, phase): KeptStates
    keep_later: list = field(default_factory=list)  # prompt-end states to keep after the step (defer_keeps)
    _last_kind: str = "decode"

    # -- requests ---------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new request; PoolExhaustedError if it cannot fit even alone."""
        self.bm.check_fits_alone(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str, keep: bool = False) -> None:
        """End ``seq`` (stop, length, cancelled, error) and give back its slot and pages (or, with
        ``keep`` and a prefix cache, park them for the next turn)."""
        if seq.status is SeqStatus.FINISHED:
            return
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
            if keep and self.prefix.enabled and seq.num_cached and seq.cache_key is not None:
                if not self._hand_over_to_twin(seq):
                    kept = Sequence(seq.token_ids[:seq.num_cached], 0, cache_key=seq.cache_key)
                    self.bm.transfer(seq, kept)
                    self._keep(kept)
            else:
                self._release(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason

    def preempt(self, seq: Sequence) -> None:
        """Recompute later: drop the cache, put the sequence at the head of the queue."""
        self.running.remove(seq)
        self._release(seq)
        seq.num_cached = 0
        seq.preemptions += 1
        self.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)

    def _release(self, seq: Sequence) -> None:
        slot = self.bm.release(seq)
        if slot is not None:
            self.device_ops.append(("release", slot))

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ---------------------------------------------------------------------------
    def schedule(self) -> Batch | None:
        """The next batch, or None when there is nothing to run."""
        admit = True
        tries = len(self.running) + 2  # a kept state released does not count: there may be many
        while tries > 0:
            tries -= 1
            decoders = [s for s in self.running if s.is_decoding]
            wants_prefill = bool(self.waiting) or any(s.is_prefilling for s in self.running)
            if wants_prefill and not (self._last_kind == "prefill" and decoders):
                batch = self._schedule_prefill(admit)
                if batch is not None:
                    self._last_kind = "prefill"
                    return batch
                # a request adopted from a kept state may have one token left: it decodes
                decoders = [s for s in self.running if s.is_decoding]
            if decoders:
                batch = self._schedule_decode()
                if batch is not None:
                    self._last_kind = "decode"
                    return batch
                continue
            if not any(s.is_prefilling for s in self.running):
                return None  # nothing runnable
            if self._evict_parked():
                tries += 1
                continue
            # Only prefills are running and none of them got pages: free some for the oldest.
            if len(self.running) > 1:
                # Pages go to the older prefills: re-admitting the victim in this pass would take
                # them back, and the two would swap forever without progress.
                self.preempt(self.running[-1])
                admit = False
                continue
            batch = self._lone_prefill(self.running[0])
            if batch is not None:
                return batch
            admit = True  # it failed: its pages are back, a queued request may run now
        return None

    def _lone_prefill(self, s: Sequence) -> Batch | None:
        """The only running sequence is prefilling and the decode margin blocks its chunk (its rows
        evicted less than expected). Nothing else can free pages: run the chunk without the margin
        if it fits (an overflow then preempts it and the fits-alone check fails it with a clear
        error), else fail it now rather than wait forever."""
        n = min(s.num_pending, self.max_prefill_tokens)
        if self.bm.prefill_need(s, n) <= self.bm.free_pages:
            self._last_kind = "prefill"
            return Batch("prefill", [s], [n])
        self._fail(s)
        return None

    def _fail(self, seq: Sequence, err: PoolExhaustedError | None = None) -> None:
        """End ``seq`` with an error its caller receives (the engine delivers ``failed``); by default
        the pool is too small for it even alone."""
        self.finish(seq, "error")
        self.failed.append((seq, err or PoolExhaustedError(
            f"the KV pool ({self.bm.geo.total_pages} pages) is full with this request alone")))

    def _schedule_prefill(self, admit: bool = True) -> Batch | None:
        bm, budget = self.bm, self.max_prefill_tokens
        promised = 0  # pages this batch's chunks are expected to take
        seqs, chunks = [], []

        def take(s: Sequence, n: int, need: int) -> None:
            nonlocal promised, budget
            promised += need
            seqs.append(s)
            chunks.append(n)
            budget -= n

        for s in self.running:
            if budget <= 0 or not s.is_prefilling:
                continue
            n = self._chunk(s, budget)
            need = bm.prefill_need(s, n)
            if bm.free_pages - promised - need >= bm.margin(len(self.running)):
                take(s, n, need)
        while admit and self.waiting and budget > 0:
            s = self.waiting[0]
            if len(self.running) >= (self.max_running or bm.geo.num_slots):
                break
            if self._wait_for_shared_prefix(s, seqs, chunks):
                break
            if len(self.prefix) and self._start_from_kept(s, promised):  # continue a kept state
                self.waiting.popleft()
                s.status = SeqStatus.RUNNING
                self.running.append(s)
                n = self._chunk(s, budget)
                need = bm.prefill_need(s, n)
                if bm.free_pages - promised - need < bm.margin(len(self.running)):
                    break  # adopted; its chunk runs once pages are back
                take(s, n, need)
                continue
            n = self._chunk(s, budget)
            need = bm.prefill_need(s, n)
            if not bm.free_slots or bm.free_pages - promised - need < bm.margin(len(self.running) + 1):
                if self._evict_parked():
                    continue
                break  # the pool is full: the request stays queued
            self.waiting.popleft()
            bm.assign_slot(s)
            s.status = SeqStatus.RUNNING
            s.num_cached = 0
            self.running.append(s)
            take(s, n, need)
        return Batch("prefill", seqs, chunks) if seqs else None

    def _chunk(self, s: Sequence, budget: int) -> int:
        """Tokens of ``s`` to prefill now: a chunk ends at the next point where a state is kept."""
        n = min(s.num_pending, budget)
        if self.prefix.enabled:
            for k in s.keep_at:
                if s.num_cached < k < s.num_cached + n:
                    n = k - s.num_cached
        return n

    def _schedule_decode(self) -> Batch | None:
        bm = self.bm
        while True:
            decoders = [s for s in self.running if s.is_decoding]
            if not decoders:
                return None
            if bm.free_pages >= bm.margin(len(decoders)):
                return Batch("decode", decoders, [1] * len(decoders))
            if self._evict_parked():
                continue
            victim = self.running[-1]
            if victim is decoders[0] and len(self.running) == 1:
                # Alone and still no room for one more token per row: it can never go on.
                self._fail(victim)
                return None
            self.preempt(victim)

    def after_step(self, batch: Batch, stats: dict[int, SlotStats], defer_keeps: bool = False) -> list[Sequence]:
        """Record the GPU's readback; returns the sequences of ``batch`` that must sample now.

        A sequence whose row ran out of pages (``oom``) is preempted: its cache is incomplete.
        ``defer_keeps``: the states to keep at prompt ends wait for :meth:`keep_deferred` (the engine
        first hands out the step's tokens), else they are kept here.
        """
        for s in self.running:
            st = stats.get(s.slot)
            if st is not None:
                self.bm.sync(s, st.pages, st.live)
        ready = []
        for s, n in zip(batch.seqs, batch.chunks, strict=True):
            if s.status is not SeqStatus.RUNNING:
                continue  # cancelled while the step ran
            st = stats.get(s.slot)
            if st is not None and st.oom:
                if batch.kind == "prefill":
                    s.prefill_overflows += 1
                self.preempt(s)
                try:
                    self.bm.check_fits_alone(s)
                except PoolExhaustedError as e:
                    self._fail(s, e)
                continue
            s.num_cached += n
            if s.num_cached == len(s.token_ids):  # everything fed: the last logits give the next token
                ready.append(s)
            if batch.kind == "prefill" and (s.num_cached == s.num_prompt or s.num_cached in s.keep_at):
                if defer_keeps:
                    self.keep_later.append(s)
                else:
                    self._keep_prompt_state(s)
        return ready
