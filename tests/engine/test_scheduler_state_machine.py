"""Scheduler + block manager invariants under random admit/decode/evict/finish/preempt/cancel sequences.

The device allocator is the pure-Python model of ``allocator_model.py``; the invariants are: no page
leaked or owned twice, free + owned == total, the host's page count equals the device's after every
step, and every admitted request ends (finished, cancelled or failed) with all its pages back.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from budgetllm.engine.block_manager import BlockManager, PoolGeometry
from budgetllm.engine.request import SeqStatus, Sequence
from budgetllm.engine.scheduler import Scheduler
from budgetllm.errors import PoolExhaustedError
from tests.engine.allocator_model import AllocatorModel

ROWS, PAGE, WINDOW = 3, 4, 5


class EngineMachine(RuleBasedStateMachine):
    @initialize(total=st.integers(20, 120), slots=st.integers(1, 5), budget=st.integers(3, 40),
                seed=st.integers(0, 99), parked=st.integers(0, 2))
    def setup(self, total, slots, budget, seed, parked):
        geo = PoolGeometry(total_pages=total, num_slots=slots, rows_per_seq=ROWS, page_size=PAGE, window=WINDOW)
        self.bm = BlockManager(geo)
        self.sched = Scheduler(self.bm, max_prefill_tokens=budget)
        self.sched.prefix.capacity = parked
        self.dev = AllocatorModel(total, slots, ROWS, PAGE, WINDOW, seed=seed)
        self.seqs: list[Sequence] = []
        self.out: dict[int, int] = {}

    @rule(prompt=st.integers(1, 40), max_new=st.integers(1, 30), cr=st.sampled_from([1.0, 2.0, 8.0]))
    def admit(self, prompt, max_new, cr):
        seq = Sequence(list(range(prompt)), max_new_tokens=max_new, expected_cr=cr)
        try:
            self.sched.add(seq)
        except PoolExhaustedError:
            assert self.bm.expected_pages(seq, seq.total_tokens) + self.bm.margin(1) > self.bm.geo.total_pages
            return
        self.seqs.append(seq)
        self.out[seq.seq_id] = 0

    @rule(evict=st.sampled_from([0.0, 0.5, 0.9]), stop=st.integers(0, 9), hold=st.booleans())
    def step(self, evict, stop, hold=False):
        sched = self.sched
        for slot in sched.to_release:
            self.dev.release(slot)
        sched.to_release.clear()
        batch = sched.schedule()
        for slot in sched.to_release:  # preemptions made while scheduling
            self.dev.release(slot)
        sched.to_release.clear()
        if batch is None:  # liveness: only the consumers' acks may stop the engine
            assert not sched.has_work or any(s.hold for s in self.seqs if s.status is not SeqStatus.FINISHED)
            return
        assert all(s.status is SeqStatus.RUNNING for s in batch.seqs)
        if batch.kind == "decode":
            assert self.bm.free_pages >= self.bm.margin(len(batch.seqs)), "decode margin crossed"
        stats = self.dev.run(batch, evict)
        for s in sched.running:
            st_ = stats[s.slot]
            assert not (st_.oom and batch.kind == "decode"), "the decode margin let a row run dry"
        ready = sched.after_step(batch, stats)
        for s in ready:
            self.out[s.seq_id] += 1
            if self.out[s.seq_id] >= s.max_new_tokens or (stop == 0 and s.seq_id % 3 == 0):
                sched.finish(s, "stop", keep=True)
            else:
                s.append_token(7)
                s.hold = hold  # the engine waits for the consumer's ack (thinking-phase tokens)

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
        parked = list(self.sched.prefix.parked.values())
        old = parked[i % len(parked)] if parked and i % 4 else done[i % len(done)]
        seq = Sequence(old.token_ids + [9] * extra, max_new_tokens=max_new, cache_key=old.cache_key)
        try:
            self.sched.add(seq)
        except PoolExhaustedError:
            return
        self.seqs.append(seq)
        self.out[seq.seq_id] = 0

    @rule(n=st.integers(1, 60), evict=st.sampled_from([0.0, 0.5]))
    def run_a_while(self, n, evict):
        for _ in range(n):
            for s in self.seqs:
                s.hold = False
            self.step(evict, 5)

    @rule(i=st.integers(0, 50))
    def ack(self, i):
        held = [s for s in self.seqs if s.hold]
        if held:
            held[i % len(held)].hold = False

    @rule()
    def preempt_newest(self):
        if self.sched.running:
            self.sched.preempt(self.sched.running[-1])

    @invariant()
    def pages_consistent(self):
        self.dev.check()
        pending = sum(len([p for r in self.dev.rows[s] for p in r.pages]) for s in self.sched.to_release)
        assert self.bm.free_pages == len(self.dev.free) + pending, "host and device disagree on free pages"
        assert self.bm.used_pages == sum(self.bm.held.values())
        slots = [s.slot for s in self.sched.running]
        assert None not in slots and len(set(slots)) == len(slots), "a slot is owned twice"
        for s in self.sched.waiting:
            assert s.slot is None and s.num_cached == 0 and s.seq_id not in self.bm.held

    def teardown(self):
        for _ in range(5000):
            if not self.sched.has_work:
                break
            for s in self.seqs:
                s.hold = False
            self.step(0.5, 1)
        assert not self.sched.has_work, "requests never finished"
        event(f"prefix-cache hits: {min(self.sched.prefix.hits, 3)}")
        while self.sched._evict_parked():
            pass
        for slot in self.sched.to_release:
            self.dev.release(slot)
        self.dev.check()
        assert len(self.dev.free) == self.dev.total and self.bm.free_pages == self.bm.geo.total_pages
        assert all(s.status is SeqStatus.FINISHED for s in self.seqs)


EngineMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
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


def test_next_turn_reuses_the_parked_cache():
    geo = PoolGeometry(total_pages=200, num_slots=2, rows_per_seq=2, page_size=4, window=3)
    bm = BlockManager(geo)
    sched = Scheduler(bm, max_prefill_tokens=64)
    sched.prefix.capacity = 1
    dev = AllocatorModel(200, 2, 2, 4, 3)
    a = Sequence(list(range(20)), 4, cache_key="dms>0")
    sched.add(a)
    batch = sched.schedule()
    sched.after_step(batch, dev.run(batch, 0.5))
    a.append_token(99)
    batch = sched.schedule()
    assert batch.kind == "decode"
    sched.after_step(batch, dev.run(batch, 0.5))
    sched.finish(a, "stop", keep=True)  # parked: slot and pages kept
    assert a.slot is not None and bm.free_slots == 1 and not sched.to_release
    other = Sequence(a.token_ids[:21] + [5], 4, cache_key="window")  # another rule: no reuse
    b = Sequence(a.token_ids[:21] + [7, 8, 9], 4, cache_key="dms>0")
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [b] and batch.chunks == [3] and b.num_cached == 21 and a.slot is None
    assert sched.prefix.hits == 1 and sched.prefix.take(other) is None
    sched.after_step(batch, dev.run(batch, 0.5))
    sched.finish(b, "stop")
    assert bm.free_pages == 200 == len(dev.free) + sum(dev.stats(s).pages for s in sched.to_release)
