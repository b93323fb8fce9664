"""The paged engine's thread: schedule -> prefill or decode step -> GPU sampling -> one readback ->
per-row host logic, like nano-vllm's ``LLMEngine.step`` loop.

:class:`EngineLoop` is a part of :class:`~budgetllm.engine.paged.backend.PagedBackend` (its base
class): the backend's ``run`` puts commands into ``_inbox`` ("add", "cancel", "clear_prefix",
"stop"); this thread applies them, runs one step at a time and hands each request's outputs to its
:class:`~budgetllm.engine.paged.handle.Handle`. It reads the backend's ``sched`` (Scheduler),
``runner`` (ModelRunner), ``bm`` (BlockManager), ``model``, ``window`` and ``page_bytes``.
Finishing items wait until the device has released the request's pages (``_release``), and
staged tokens are delivered once the next step is launched (``_deliver``), so consumer threads
wake while the GPU works; a request's first token goes out right after its readback, before the
step's kept-state work (``sched.keep_deferred``) and the next launch.

A step is "launch, then read": :meth:`_launch` schedules and launches a step and starts its
readback; before reading it, :meth:`_step` launches the next decode step ahead when
:func:`~budgetllm.engine.paged.launch_ahead.can_run_ahead` allows (``launch_ahead``, on by
default; the rules and why outputs stay exactly the lockstep ones are in engine/paged/launch_ahead.py),
and :meth:`_finish` reads the step and applies its per-row host logic while that one runs.
"""

from __future__ import annotations

import queue
import threading
import time

from budgetllm.engine.paged.handle import row_rule_for, sampling_for
from budgetllm.engine.paged.launch_ahead import Launched, can_run_ahead, voids_ahead
from budgetllm.engine.paged.sequence import SeqStatus
from budgetllm.engine.step import void_ids
from budgetllm.errors import BudgetLLMError, PoolExhaustedError


class EngineLoop:
    """The engine thread's methods (state lives on the backend, set up in its ``__init__``)."""

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                if self.error is not None:
                    raise BudgetLLMError(f"the paged engine stopped after an error: {self.error!r}")
                self._thread = threading.Thread(target=self._loop, name="budgetllm-paged-engine", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        try:
            while True:
                # Release BEFORE blocking: a cancel drained while everything was on hold leaves the
                # engine idle, and its slot must not wait for the next command to go back.
                self._release()
                if not self._busy:
                    self._deliver()
                if not self._drain(block=not self._busy):
                    return self._read_ahead()
                self._release()
                if not self._step() and self._busy:
                    self._deliver()  # nothing runnable now (pages): wait for a command
                    if not self._drain(block=True):
                        return self._read_ahead()
        except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
            self.error = e
            pending = list(self.sched.running) + list(self.sched.waiting)
            while not self._inbox.empty():  # requests not yet admitted must not wait forever
                cmd, seq = self._inbox.get_nowait()
                if cmd == "add":
                    pending.append(seq)
            for s in pending:
                s.payload.fail(e)
                s.payload.flush()
            raise

    def _read_ahead(self) -> None:
        """On stop: read the step launched ahead (its host logic applied), so host and device agree."""
        cur, self._ahead = self._ahead, None
        if cur is not None:
            self._finish(cur)
            self._deliver()

    @property
    def _busy(self) -> bool:
        """Requests to run, or a step launched ahead still to read."""
        return self.sched.has_work or self._ahead is not None

    def _drain(self, block: bool) -> bool:
        """Apply queued commands (add, cancel, clear_prefix); False on stop."""
        while True:
            try:
                cmd, seq = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if cmd == "stop":
                return False
            if cmd == "add":
                try:
                    self.sched.add(seq)
                except PoolExhaustedError as e:
                    seq.payload.fail(e)
                    self._ended.append(seq.payload)
            elif cmd == "clear_prefix":
                while self.sched._evict_parked():
                    pass
            elif cmd == "cancel" and seq.status is not SeqStatus.FINISHED:
                self.sched.finish(seq, "cancelled")
                seq.payload.cancel()
                self._ended.append(seq.payload)

    def _deliver(self) -> None:
        """Hand staged tokens to their consumers (called once the next step is launched, or idle)."""
        for h in self._staged:
            h.deliver()
        self._staged.clear()

    def _release(self) -> None:
        """Apply the scheduler's device work (releases, forks of kept states, in order), then deliver
        the final items of ended requests."""
        self.sched.apply_device_ops(self.runner)
        for seq, err in self.sched.failed:
            seq.payload.fail(err)
            self._ended.append(seq.payload)
        self.sched.failed.clear()
        for h in self._ended:
            h.flush()
        self._ended.clear()

    def _step(self) -> bool:
        """Read one step (launched now, or ahead by the last call), launching the next ahead first
        when allowed; False when nothing was runnable."""
        cur, self._ahead = self._ahead, None
        if cur is None:
            cur = self._launch()
            if cur is None:
                return False
        if self.launch_ahead and can_run_ahead(self, cur):
            self._ahead = self._launch_ahead(cur)
        self._deliver()  # the previous step's tokens, while the GPU runs
        self._finish(cur)
        return True

    def _launch(self) -> Launched | None:
        """Schedule a step, launch it, sample on the GPU and start its readback (lockstep)."""
        sched, runner = self.sched, self.runner
        for s in list(sched.running) + list(sched.waiting):
            if s.payload.req.cancelled:
                sched.finish(s, "cancelled")
                s.payload.cancel()
                self._ended.append(s.payload)
        self._release()
        batch = sched.schedule()
        self._release()
        if batch is None:
            return None
        t0 = time.perf_counter()
        self.steps += 1
        has_logits = self.model.dms.has_decisions
        rules = [row_rule_for(s.payload, has_logits, self.window) for s in batch.seqs]
        if batch.kind == "prefill":
            want = [s.num_cached + n == len(s.token_ids) for s, n in zip(batch.seqs, batch.chunks, strict=True)]
            items = [(s.slot, s.token_ids[s.num_cached:s.num_cached + n], s.num_cached, r)
                     for s, n, r in zip(batch.seqs, batch.chunks, rules, strict=True)]
            logits = runner.prefill(items, want, free_pages=self.bm.free_pages)
            samplers = [s for s, w in zip(batch.seqs, want, strict=True) if w]
        else:
            logits = runner.decode([(s.slot, s.token_ids[-1], r) for s, r in zip(batch.seqs, rules, strict=True)])
            samplers = list(batch.seqs)
        t_launched = time.perf_counter()
        firsts = [s.payload for s in batch.seqs if "read" not in s.payload.req.phases]
        sb = sampling_for([s.payload for s in samplers], runner.device) if samplers else None
        pending = runner.sample(logits if samplers else None, sb, decoded=batch.kind == "decode")
        return Launched(batch, samplers, sb, pending, t0, t_launched, firsts)

    def _launch_ahead(self, cur: Launched) -> Launched:
        """Launch the decode step after ``cur`` (same batch) fed on the device with its sampled tokens."""
        runner = self.runner
        t0 = time.perf_counter()
        self.steps += 1
        self.ahead_counts["launched"] += 1
        eos = cur.eos if cur.eos is not None else runner.eos_rows([void_ids(s.payload.req) for s in cur.batch.seqs])
        rng = None if cur.sb.all_greedy else runner.sampler.generator.get_state()  # no draws when greedy
        logits = runner.decode_ahead(len(cur.batch.seqs), eos)
        t_launched = time.perf_counter()
        pending = runner.sample(logits, cur.sb, decoded=True)
        return Launched(cur.batch, cur.samplers, cur.sb, pending, t0, t_launched, [], ahead=True, eos=eos, rng=rng)

    def _finish(self, cur: Launched) -> None:
        """Read ``cur`` back and apply its per-row host logic; discard a void step launched ahead."""
        sched, batch = self.sched, cur.batch
        rb = self.runner.read(cur.pending)
        self.device_free_pages = rb.free_pages
        t_read = time.perf_counter()
        nxt = self._ahead
        if nxt is not None and voids_ahead(cur, rb.tokens):  # the device made it a void step
            if nxt.rng is not None:
                self.runner.sampler.generator.set_state(nxt.rng)  # as if it had never sampled
            self._ahead = None
            self.steps -= 1
            self.ahead_counts["void"] += 1
        t0 = cur.t0
        for h in cur.firsts:
            h.req.phases.update(scheduled=t0 - h.t_start, launched=cur.t_launched - h.t_start, read=t_read - h.t_start)
        ready = set(id(s) for s in sched.after_step(batch, rb.stats, defer_keeps=True))
        dt = time.perf_counter() - t0
        decoded = 0
        for s, tok in zip(cur.samplers, rb.tokens, strict=True):
            if id(s) not in ready:
                continue
            h = s.payload
            h.account(s, decode=batch.kind == "decode", page_bytes=self.page_bytes, seconds=dt)
            decoded += batch.kind == "decode"
            finished = h.step(s, tok)
            if h.pending:
                self._staged.append(h)
            if finished is not None:
                sched.finish(s, finished, keep=finished in ("stop", "length"))
                self._ended.append(h)
        if decoded:
            with self._stats_lock:  # one locked add per step, not per token
                self.tokens_generated += decoded
        for s in cur.samplers:  # first tokens go out now, before the kept states' work and the next launch
            if "delivered" not in s.payload.req.phases:
                s.payload.deliver()  # nothing pending: nothing happens
        sched.keep_deferred()
        self._release()
        if batch.kind == "decode":
            self.decode_log.append((len(batch.seqs), t0, dt, time.perf_counter() - t0, cur.t_launched - t0,
                                    self.steps - (self._ahead is not None)))
            del self.decode_log[:-4096]
