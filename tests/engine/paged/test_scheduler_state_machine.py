"""Scheduler + block manager invariants under random admit/decode/evict/finish/preempt/cancel sequences.

The device allocator is the pure-Python model of ``allocator_model.py`` (copy-on-write forks with
holder counts included); the invariants are: no page leaked, held by a free slot or freed twice,
the host never counts more free pages than the device has (exactly as many while no page is
shared), and every admitted request ends (finished, cancelled or failed) with all its pages back
once the kept states are released. Conversations: follow-up turns that extend a finished request,
branches that edit an earlier part (they reuse less), kept states pushed out under pool pressure.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from budgetllm.engine.paged.block_manager import BlockManager, PoolGeometry
from budgetllm.engine.paged.scheduler import Scheduler
from budgetllm.engine.paged.sequence import SeqStatus, Sequence
from budgetllm.engine.prefix_tree import PrefixTree
from budgetllm.errors import PoolExhaustedError
from tests.engine.paged.allocator_model import AllocatorModel

ROWS, PAGE, WINDOW = 3, 4, 5


class EngineMachine(RuleBasedStateMachine):
    @initialize(total=st.integers(20, 120), slots=st.integers(1, 5), budget=st.integers(3, 40),
                seed=st.integers(0, 99), parked=st.integers(0, 4), cap=st.integers(0, 80))
    def setup(self, total, slots, budget, seed, parked, cap):
        geo = PoolGeometry(total_pages=total, num_slots=slots + parked, rows_per_seq=ROWS, page_size=PAGE,
                           window=WINDOW)
        self.bm = BlockManager(geo)
        # page_bytes 1: the tree's capacity counts pages
        self.sched = Scheduler(self.bm, max_prefill_tokens=budget, prefix=PrefixTree(cap, max_entries=parked),
                               max_running=slots)
        self.dev = AllocatorModel(total, slots + parked, ROWS, PAGE, WINDOW, seed=seed)
        self.seqs: list[Sequence] = []
        self.out: dict[int, int] = {}
        self.nth: dict[int, int] = {}  # seq_id -> admission order in this machine (seq_ids are global)

    @rule(prompt=st.integers(1, 40), max_new=st.integers(1, 30), cr=st.sampled_from([1.0, 2.0, 8.0]))
    def admit(self, prompt, max_new, cr):
        seq = Sequence(list(range(prompt)), max_new_tokens=max_new, expected_cr=cr, cache_key=cr)
        try:
            self.sched.add(seq)
        except PoolExhaustedError:
            assert self.bm.expected_pages(seq, seq.total_tokens) + self.bm.margin(1) > self.bm.geo.total_pages
            return
        self._track(seq)

    def _track(self, seq: Sequence) -> None:
        self.nth[seq.seq_id] = len(self.seqs)
        self.seqs.append(seq)
        self.out[seq.seq_id] = 0

    @rule(evict=st.sampled_from([0.0, 0.5, 0.9]), stop=st.integers(0, 9))
    def step(self, evict, stop):
        sched = self.sched
        self.dev.apply(sched.device_ops)
        batch = sched.schedule()
        self.dev.apply(sched.device_ops)  # preemptions, releases and forks made while scheduling
        if batch is None:  # liveness: no consumer is waited for; something always runs
            assert not sched.has_work
            return
        assert all(s.status is SeqStatus.RUNNING for s in batch.seqs)
        if batch.kind == "decode":
            assert self.bm.free_pages >= self.bm.margin(len(batch.seqs)), "decode margin crossed"
        stats = self.dev.run(batch, evict)
        for s in sched.running:
            st_ = stats[s.slot]
            assert not (st_.oom and batch.kind == "decode"), "the decode margin let a row run dry"
        defer = stop % 2 == 1  # as the engine: prompt-end states kept after the step's tokens are out
        ready = sched.after_step(batch, stats, defer_keeps=defer)
        for s in ready:
            self.out[s.seq_id] += 1
            if self.out[s.seq_id] >= s.max_new_tokens or (stop == 0 and self.nth[s.seq_id] % 3 == 0):
                sched.finish(s, "stop", keep=True)
            else:
                s.append_token(7)
        sched.keep_deferred()
        assert not sched.keep_later

    @rule(i=st.integers(0, 50))
    def cancel(self, i):
        live = [s for s in self.seqs if s.status is not SeqStatus.FINISHED]
        if live:
            self.sched.finish(live[i % len(live)], "cancelled")

    @rule(i=st.integers(0, 50), extra=st.integers(1, 12), max_new=st.integers(1, 20))
    def next_turn(self, i, extra, max_new):
        """A follow-up request whose prompt extends a finished one (a prefix-cache hit if parked)."""
        done = [s for s in self.seqs if s.status is SeqStatus.FINISHED and s.finish_reason == "stop"]
        if not done:
            return
        parked = [e.state for e in self.sched.prefix.entries()]
        old = parked[i % len(parked)] if parked and i % 4 else done[i % len(done)]
        cut = len(old.token_ids) - (i % 3) * (i % len(old.token_ids))  # i % 3: an edited earlier part
        seq = Sequence(old.token_ids[:cut] + [9 + i % 3] * extra, max_new_tokens=max_new, cache_key=old.cache_key)
        try:
            self.sched.add(seq)
        except PoolExhaustedError:
            return
        self._track(seq)

    @rule(n=st.integers(1, 60), evict=st.sampled_from([0.0, 0.5]))
    def run_a_while(self, n, evict):
        for _ in range(n):
            self.step(evict, 5)

    @rule()
    def preempt_newest(self):
        if self.sched.running:
            self.sched.preempt(self.sched.running[-1])

    @invariant()
    def pages_consistent(self):
        self.dev.check()
        self.dev.apply(self.sched.device_ops)  # what the engine does before its next batch
        if all(n == 1 for n in self.dev.holders.values()):
            assert self.bm.free_pages == len(self.dev.free), "host and device disagree on free pages"
        assert self.bm.free_pages <= len(self.dev.free), "the host counts pages the device does not have"
        for slot in range(self.bm.geo.num_slots):
            if slot not in self.bm.slot_owner:
                assert not any(r.pages for r in self.dev.rows[slot]), "a free slot holds pages"
        kept = [e.state for e in self.sched.prefix.entries()]
        assert self.sched.prefix.nbytes == sum(k.pages_held for k in kept) <= self.sched.prefix.capacity_bytes
        for k in kept:
            assert self.dev.seen[k.slot] == len(k.token_ids), "a kept state lost its tokens"
        assert self.bm.used_pages == sum(self.bm.held.values())
        slots = [s.slot for s in self.sched.running]
        assert None not in slots and len(set(slots)) == len(slots), "a slot is owned twice"
        for s in self.sched.waiting:
            assert s.slot is None and s.num_cached == 0 and s.seq_id not in self.bm.held

    def teardown(self):
        for _ in range(5000):
            if not self.sched.has_work:
                break
            self.step(0.5, 1)
        assert not self.sched.has_work, "requests never finished"
        event(f"prefix-cache hits: {min(self.sched.prefix.hits, 3)}")
        event(f"shared pages: {any(n > 1 for n in self.dev.holders.values())}")
        while self.sched._evict_parked():
            pass
        self.dev.apply(self.sched.device_ops)
        self.dev.check()
        assert len(self.dev.free) == self.dev.total and self.bm.free_pages == self.bm.geo.total_pages
        assert all(s.status is SeqStatus.FINISHED for s in self.seqs)


# derandomize: CI runs a fixed set of 150 machines. A random run on 2026-11-30 found a failure that
# hypothesis called flaky: the machine read the global seq_id (so a replay took other decisions; it
# now numbers requests itself), and the failure was real: schedule() returned None with work left
# (each kept state released used one of its passes; a failed lone prefill ended the call). Both are
# fixed and pinned by the two tests at the end of this file.
EngineMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None, derandomize=True,
                                           suppress_health_check=[HealthCheck.too_slow])
TestEngineMachine = EngineMachine.TestCase


def test_queue_when_full_then_admit():
    geo = PoolGeometry(total_pages=40, num_slots=4, rows_per_seq=2, page_size=4, window=3)
    bm = BlockManager(geo)
    sched = Scheduler(bm, max_prefill_tokens=128)
    a, b = Sequence(list(range(40)), 4), Sequence(list(range(40)), 4)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a] and list(sched.waiting) == [b]  # b waits for pages


def test_refuses_only_what_cannot_fit_alone():
    geo = PoolGeometry(total_pages=100, num_slots=2, rows_per_seq=2, page_size=16, window=16)
    bm = BlockManager(geo)
    sched = Scheduler(bm)
    sched.add(Sequence(list(range(100)), 1900, expected_cr=8.0))  # dense would need 250 pages: fits at CR 8
    with pytest.raises(PoolExhaustedError):
        sched.add(Sequence(list(range(100)), 1900, expected_cr=1.0))


def test_next_turn_reuses_the_kept_states():
    """A request keeps its prompt-end state (a twin) and its end state; the next turn continues from
    the end state, an edited branch from the prompt-end state, another rule from nothing."""
    geo = PoolGeometry(total_pages=200, num_slots=4, rows_per_seq=2, page_size=4, window=3)
    bm = BlockManager(geo)
    sched = Scheduler(bm, max_prefill_tokens=64, prefix=PrefixTree(200, max_entries=3), max_running=1)
    dev = AllocatorModel(200, 4, 2, 4, 3)
    a = Sequence(list(range(20)), 4, cache_key="dms>0")
    sched.add(a)
    batch = sched.schedule()
    sched.after_step(batch, dev.run(batch, 0.5))
    assert sched.device_ops == [("fork", a.slot, 1, 20)] and len(sched.prefix) == 1
    dev.apply(sched.device_ops)
    a.append_token(99)
    batch = sched.schedule()
    assert batch.kind == "decode"
    sched.after_step(batch, dev.run(batch, 0.5))
    sched.finish(a, "stop", keep=True)  # its slot becomes the end state
    assert a.slot is None and len(sched.prefix) == 2 and not sched.device_ops
    other = Sequence(a.token_ids[:21] + [5], 4, cache_key="window")  # another rule: no reuse
    assert sched.prefix.match(other.token_ids, other.cache_key) is None
    b = Sequence(a.token_ids[:21] + [7, 8, 9], 4, cache_key="dms>0")
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [b] and batch.chunks == [3] and b.num_cached == b.reused == 21
    assert sched.prefix.hits == 1 and sched.device_ops[0][0] == "fork"
    dev.apply(sched.device_ops)
    sched.after_step(batch, dev.run(batch, 0.5))
    sched.finish(b, "stop")
    c = Sequence(a.token_ids[:20] + [5, 5], 4, cache_key="dms>0")  # an edited answer: the prompt state
    sched.add(c)
    batch = sched.schedule()
    assert c.reused == 20 and batch.chunks == [2]
    dev.apply(sched.device_ops)
    sched.after_step(batch, dev.run(batch, 0.5))
    sched.finish(c, "cancelled")
    while sched._evict_parked():
        pass
    dev.apply(sched.device_ops)
    dev.check()
    assert bm.free_pages == 200 == len(dev.free)


def _running(sched: Scheduler, seq: Sequence, cached: int, pages: int) -> None:
    """Put ``seq`` on a slot as a running request with ``cached`` tokens in ``pages`` pages."""
    sched.bm.assign_slot(seq)
    seq.status, seq.num_cached = SeqStatus.RUNNING, cached
    sched.running.append(seq)
    sched.bm.sync(seq, pages, pages)


def test_a_prefill_waits_for_as_many_kept_states_as_it_needs():
    """Found by a random run of the machine: a lone prefill whose chunk needs the pages of three kept
    states. Each release used one of schedule()'s few passes (len(running) + 2), so the room was made
    but the call returned None with work left (the engine loop then idles: a stalled request)."""
    geo = PoolGeometry(total_pages=24, num_slots=4, rows_per_seq=3, page_size=4, window=5)
    sched = Scheduler(BlockManager(geo), max_prefill_tokens=10, prefix=PrefixTree(24, max_entries=3), max_running=1)
    s = Sequence(list(range(25)), 1)
    _running(sched, s, cached=15, pages=9)
    for i in range(3):
        kept = Sequence([100 + i] * 4, 0, cache_key="k")
        sched.bm.assign_slot(kept)
        sched.bm.sync(kept, 1, 4)
        sched._keep(kept)
    assert len(sched.prefix) == 3 and sched.bm.free_pages == 12  # the chunk needs 12 + the margin of 3
    batch = sched.schedule()
    assert batch is not None and batch.seqs == [s] and batch.chunks == [10]
    assert len(sched.prefix) == 0 and [op[0] for op in sched.device_ops] == ["release"] * 3


def test_a_failed_lone_prefill_lets_the_queue_run():
    """A lone prefill that cannot fit even without the margin fails with a clear error; a queued
    request runs in the same call instead of the engine idling with work queued."""
    geo = PoolGeometry(total_pages=24, num_slots=2, rows_per_seq=3, page_size=4, window=5)
    sched = Scheduler(BlockManager(geo), max_prefill_tokens=40, max_running=1)
    big = Sequence(list(range(60)), 1)
    big.prefill_overflows = 1  # its rows kept everything once: the dense bound, 45 pages for 60 tokens
    _running(sched, big, cached=2, pages=3)
    small = Sequence(list(range(5)), 2)
    sched.add(small)
    batch = sched.schedule()
    assert batch is not None and batch.seqs == [small]
    assert big.status is SeqStatus.FINISHED and big.finish_reason == "error"
    assert [f[0] for f in sched.failed] == [big] and isinstance(sched.failed[0][1], PoolExhaustedError)


def test_a_request_adopted_with_one_token_left_decodes():
    """Found by a random run after the two fixes above: a request admitted on top of a kept state
    with one token to feed is a decoder, but its chunk's pages were not there (the kept state had
    evicted more than expected), so the prefill pass adopted it without a batch and schedule()
    returned None (it only looked for decoders before admitting)."""
    geo = PoolGeometry(total_pages=30, num_slots=2, rows_per_seq=3, page_size=4, window=5)
    sched = Scheduler(BlockManager(geo), max_prefill_tokens=16, prefix=PrefixTree(30, max_entries=1), max_running=1)
    kept = Sequence(list(range(32)), 0, cache_key="k")
    sched.bm.assign_slot(kept)
    sched.bm.sync(kept, 3, 12)  # 32 tokens in 3 pages: its rows evicted most of them
    sched._keep(kept)
    s = Sequence(list(range(32)) + [99], 1, cache_key="k")
    sched.add(s)
    batch = sched.schedule()
    assert batch is not None and batch.kind == "decode" and batch.seqs == [s]
    assert s.reused == 32 and sched.device_ops == [("fork", kept.slot, s.slot, 32)]


def test_a_one_token_call_keeps_its_state_without_a_fork():
    """A request that ends in the step that cached its prompt: its prompt-state twin takes its slot
    (no copy-on-write fork queued, no release), and a follow-up reuses it."""
    geo = PoolGeometry(total_pages=60, num_slots=3, rows_per_seq=3, page_size=4, window=5)
    sched = Scheduler(BlockManager(geo), max_prefill_tokens=64, prefix=PrefixTree(60, max_entries=2), max_running=1)
    dev = AllocatorModel(60, 3, 3, 4, 5)
    a = Sequence(list(range(20)), 1, cache_key="k")
    sched.add(a)
    batch = sched.schedule()
    assert sched.after_step(batch, dev.run(batch, 0.5)) == [a] and sched.device_ops[0][0] == "fork"
    assert sched.bm.free_pages == 60 - 2 * a.pages_held  # the twin counts its pages in full
    slot = a.slot
    sched.finish(a, "stop", keep=True)
    assert sched.device_ops == [] and len(sched.prefix) == 1
    (kept,) = [e.state for e in sched.prefix.entries()]
    assert kept.slot == slot and kept.token_ids == list(range(20)) and sched.bm.free_pages == 60 - kept.pages_held
    b = Sequence(list(range(20)) + [5, 6], 1, cache_key="k")
    sched.add(b)
    batch = sched.schedule()
    assert b.reused == 20 and batch.chunks == [2] and sched.device_ops == [("fork", slot, b.slot, 20)]
    dev.apply(sched.device_ops)
    dev.check()


def test_concurrent_prompts_share_their_common_prefix():
    """Two requests with the same 40-token system prompt arrive together: the first one's chunk stops
    at 40 and keeps a state there, the second waits for it and continues from a copy-on-write twin
    (pages shared on the device), the first goes on from 40. Every page comes back at the end."""
    geo = PoolGeometry(total_pages=200, num_slots=5, rows_per_seq=3, page_size=4, window=5)
    sched = Scheduler(BlockManager(geo), max_prefill_tokens=128, prefix=PrefixTree(200, max_entries=3))
    dev = AllocatorModel(200, 5, 3, 4, 5)
    system = list(range(1000, 1040))
    a, b = Sequence(system + [1, 2, 3], 2, cache_key="k"), Sequence(system + [7, 8], 2, cache_key="k")
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a] and batch.chunks == [40] and list(sched.waiting) == [b] and a.keep_at == (40,)
    sched.after_step(batch, dev.run(batch, 0.0))
    assert [op[0] for op in sched.device_ops] == ["fork"] and sched.prefix.has(system, "k")
    dev.apply(sched.device_ops)
    batch = sched.schedule()  # a's last 3 tokens and b on a twin of the state at 40
    assert batch.seqs == [a, b] and batch.chunks == [3, 2] and b.reused == b.num_cached == 40
    dev.apply(sched.device_ops)
    assert sum(n > 1 for n in dev.holders.values()) > 0  # b's rows share the system prompt's pages
    for _ in range(10):
        ready = sched.after_step(batch, dev.run(batch, 0.0))
        for s in ready:
            sched.finish(s, "stop") if len(s.token_ids) - s.num_prompt >= 1 else s.append_token(5)
        dev.apply(sched.device_ops)
        batch = sched.schedule()
        if batch is None:
            break
    assert not sched.has_work
    while sched._evict_parked():
        pass
    dev.apply(sched.device_ops)
    dev.check()
    assert len(dev.free) == 200 and sched.bm.free_pages == 200


def test_a_prefill_past_the_shared_length_is_not_waited_for():
    geo = PoolGeometry(total_pages=200, num_slots=5, rows_per_seq=3, page_size=4, window=5)
    sched = Scheduler(BlockManager(geo), max_prefill_tokens=128, prefix=PrefixTree(200, max_entries=3))
    system = list(range(1000, 1040))
    a = Sequence(system + [1, 2, 3], 2, cache_key="k")
    sched.add(a)
    sched.schedule()  # a's whole prompt in one chunk: nobody to share with yet
    a.num_cached = 43
    b = Sequence(system + [7, 8], 2, cache_key="k")
    sched.add(b)
    batch = sched.schedule()
    assert b in batch.seqs and b.reused == 0 and a.keep_at == ()
