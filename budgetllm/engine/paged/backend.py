"""The paged GPU backend: the ReferenceBackend's interface over a continuous-batching engine thread.

``run(req)`` enqueues the request and yields StepOutputs from a per-request queue; a background
thread runs the loop schedule -> prefill or decode step -> GPU sampling -> one readback -> per-row
host logic. Closing the iterator (or ``req.cancelled``) cancels the request; its pages go back.

Per-row host logic (:mod:`budgetllm.engine.paged.handle`) is the reference backend's per-token step
(:mod:`budgetllm.engine.step`) applied to a token sampled on the GPU: forced tokens of the thinking
controller replace the sampled token on the host (the forced token is what gets fed next), EOS and
length end the request.
The only per-step host sync is the readback of sampled tokens, which also carries every slot's pages,
live entries and overflow flag (for accounting and the block manager) and the free-page count.

The thinking controller follows the model's think tags by token ids (engine/thinking.py), so no
request ever waits for its consumer: the engine applies budgets, hand-offs and closes on its own.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Iterator

from budgetllm.engine.paged.block_manager import BlockManager, PoolGeometry
from budgetllm.engine.paged.handle import Handle, row_rule_for, sampling_for
from budgetllm.engine.paged.model_runner import ModelRunner, RunnerConfig
from budgetllm.engine.paged.scheduler import Scheduler
from budgetllm.engine.paged.sequence import SeqStatus, Sequence
from budgetllm.engine.prefix_tree import PrefixTree
from budgetllm.engine.request import GenerationRequest, StepOutput
from budgetllm.errors import BudgetLLMError, InvalidRequestError, PoolExhaustedError
from budgetllm.models.loading import LoadedModel


class PagedBackend:
    name = "paged"

    def __init__(self, loaded: LoadedModel, *, max_seqs: int = 128, page_size: int = 16,
                 memory_fraction: float = 0.85, num_pages: int | None = None, max_prefill_tokens: int = 4096,
                 cuda_graphs: bool = True, window: int | None = None, max_context: int | None = None,
                 seed: int | None = None, emulate_graphs: bool = False, prefix_cache: int | None = None,
                 prefix_cache_bytes: int | None = None, gpu_memory_utilization: float | None = None):
        # gpu_memory_utilization (vLLM's name; memory_fraction is the old one): budgetllm.cache.sizing
        if gpu_memory_utilization is not None:
            memory_fraction = gpu_memory_utilization
        self.model = loaded
        self.runner = ModelRunner(loaded, RunnerConfig(
            max_seqs=max_seqs, prefix_slots=_prefix_slots(prefix_cache, max_seqs), page_size=page_size,
            memory_fraction=memory_fraction, num_pages=num_pages,
            max_context=max_context, window=window, cuda_graphs=cuda_graphs, seed=seed,
            emulate_graphs=emulate_graphs))
        r = self.runner
        self.window = r.window
        self.page_bytes = r.layout.page_bytes
        geo = PoolGeometry(total_pages=r.pool.usable_pages, num_slots=r.num_seq_slots, rows_per_seq=r.layout.rows_per_seq,
                           page_size=page_size, window=r.window)
        self.bm = BlockManager(geo)
        # Conversation reuse (on by default): kept states in a prefix tree of at most prefix_cache
        # states (one extra slot each) and prefix_cache_bytes of pages (default: half the pool).
        slots = _prefix_slots(prefix_cache, max_seqs)
        cap = (geo.total_pages * self.page_bytes // 2) if prefix_cache_bytes is None else prefix_cache_bytes
        self.sched = Scheduler(self.bm, max_prefill_tokens=max_prefill_tokens,
                               prefix=PrefixTree(cap if slots else 0, max_entries=slots),
                               page_bytes=self.page_bytes, max_running=max_seqs)
        self._inbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.tokens_generated = 0
        self.device_free_pages = geo.total_pages
        self.error: BaseException | None = None
        self._warned_window = False
        self._ended: list = []  # handles whose final item waits for the device release
        self._staged: list = []  # handles with tokens staged for delivery after the next launch
        # decode steps: (batch, start, seconds to the readback, seconds in all, seconds to launch the
        # step, engine step number: consecutive decode steps have consecutive numbers)
        self.decode_log: list[tuple[int, float, float, float, float, int]] = []
        self.steps = 0  # engine steps (prefill or decode) so far

    # -- public interface (same as ReferenceBackend) ----------------------------------------
    def run(self, req: GenerationRequest) -> Iterator[StepOutput]:
        vocab = self.runner.model.vocab
        ids = req.prompt_ids
        if ids and (min(ids) < 0 or max(ids) >= vocab):  # would kill the engine thread mid-step
            raise InvalidRequestError("prompt", f"token ids must be in [0, {vocab})")
        if len(req.prompt_ids) + req.controller.max_tokens > self.runner.max_context:  # RoPE table, block tables
            raise InvalidRequestError("max_tokens", f"prompt ({len(req.prompt_ids)}) + max_tokens "
                                      f"({req.controller.max_tokens}) exceed the engine's max_context "
                                      f"{self.runner.max_context}")
        if req.rule.evicts and req.rule.window != self.window and not self._warned_window:
            self._warned_window = True
            warnings.warn(f"the paged pool has one window ({self.window}); a request asked for {req.rule.window} "
                          f"({req.rule.mode} mode) and runs with {self.window}. Pass window= to PagedBackend "
                          "to change it", stacklevel=2)
        handle = Handle(req, queue.Queue())
        seq = Sequence(list(req.prompt_ids), max_new_tokens=max(1, req.controller.max_tokens), keep_at=req.keep_at,
                       expected_cr=req.rule.expected_cr, payload=handle,
                       cache_key=row_rule_for(handle, self.model.dms.has_decisions, self.window))
        self._ensure_thread()
        self._inbox.put(("add", seq))
        try:
            while True:
                item = handle.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if not handle.done:
                req.cancelled = True
                self._inbox.put(("cancel", seq))

    def pool_stats(self) -> dict:
        bm, pb = self.bm, self.page_bytes
        return {
            "backend": "paged", "pages_total": bm.geo.total_pages, "pages_free": bm.free_pages,
            "pages_used": bm.used_pages, "device_pages_free": self.device_free_pages,
            "active": len(self.sched.running), "queued": len(self.sched.waiting),
            "tokens_generated": self.tokens_generated, "free_bytes": bm.free_pages * pb,
            "total_bytes": bm.geo.total_pages * pb, "reserved_bytes": bm.used_pages * pb,
            "used_bytes": bm.used_pages * pb, "page_bytes": pb, "page_size": bm.geo.page_size,
            "parked": len(self.sched.prefix), "prefix_hits": self.sched.prefix.hits,
            "prefix_pages": self.sched.prefix.nbytes // pb, "prefix_bytes": self.sched.prefix.nbytes,
            "prefix_tokens_reused": self.sched.prefix.reused_tokens,
            "prefill_graphs": self.runner.prefill_graphs is not None,
            "prefill_graph_error": self.runner.prefill_graph_error, "max_seqs": self.sched.max_running, "window": self.window, "preemptions": self.sched.num_preemptions,
        }

    def clear_prefix_cache(self) -> None:
        """Release every parked conversation (asynchronously, on the engine thread)."""
        self._ensure_thread()
        self._inbox.put(("clear_prefix", None))

    def device_free_pages_now(self) -> int:
        """The device allocator's free count, read now (a sync; for tests and diagnostics when idle)."""
        from budgetllm.kernels import num_free_pages

        return int(num_free_pages(self.runner.kv).item())  # padding pages are counted as used

    def close(self) -> None:
        """Stop the engine thread, fail what is still queued, and drop the pool, the CUDA graphs
        and the model (the memory returns once nothing else refers to them). Idempotent."""
        if self._thread is not None:
            self._inbox.put(("stop", None))
            self._thread.join(timeout=10)
        if self.runner is None:
            return
        from budgetllm.errors import RequestCancelledError

        err = RequestCancelledError("the engine was closed (LLM.close()) while this request ran")
        pending = list(self.sched.running) + list(self.sched.waiting)
        while not self._inbox.empty():
            cmd, seq = self._inbox.get_nowait()
            pending += [seq] if cmd == "add" else []
        for s in pending:
            s.payload.fail(err)
            s.payload.flush()
        self.error = self.error or err
        self.runner = self._reference = self.model = None

    # -- the engine thread ------------------------------------------------------------------
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
                if not self.sched.has_work:
                    self._deliver()
                if not self._drain(block=not self.sched.has_work):
                    return
                self._release()
                if not self._step() and self.sched.has_work:
                    self._deliver()  # nothing runnable now (pages): wait for a command
                    if not self._drain(block=True):
                        return
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
        ops = self.sched.device_ops
        if ops:
            batch: list[int] = []
            for op in ops:
                if op[0] == "release":
                    batch.append(op[1])
                    continue
                self.runner.release(batch)
                batch = []
                self.runner.fork(*op[1:])
            self.runner.release(batch)
            ops.clear()
        for seq, err in self.sched.failed:
            seq.payload.fail(err)
            self._ended.append(seq.payload)
        self.sched.failed.clear()
        for h in self._ended:
            h.flush()
        self._ended.clear()

    def _step(self) -> bool:
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
            return False
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
        self._deliver()  # the previous step's tokens, while the GPU runs this one
        firsts = [s.payload for s in batch.seqs if not s.payload.req.phases]
        sb = sampling_for([s.payload for s in samplers], runner.device) if samplers else None
        rb = runner.sample_and_read(logits if samplers else None, sb, decoded=batch.kind == "decode")
        self.device_free_pages = rb.free_pages
        t_read = time.perf_counter()
        for h in firsts:
            h.req.phases.update(scheduled=t0 - h.t_start, launched=t_launched - h.t_start, read=t_read - h.t_start)
        ready = set(id(s) for s in sched.after_step(batch, rb.stats))
        dt = time.perf_counter() - t0
        for s, tok in zip(samplers, rb.tokens, strict=True):
            if id(s) not in ready:
                continue
            h = s.payload
            h.account(s, decode=batch.kind == "decode", page_bytes=self.page_bytes, seconds=dt)
            if batch.kind == "decode":
                with self._stats_lock:
                    self.tokens_generated += 1
            finished = h.step(s, tok)
            if h.pending:
                self._staged.append(h)
            if finished is not None:
                sched.finish(s, finished, keep=finished in ("stop", "length"))
                self._ended.append(h)
        self._release()
        if batch.kind == "decode":
            self.decode_log.append((len(batch.seqs), t0, dt, time.perf_counter() - t0, t_launched - t0, self.steps))
            del self.decode_log[:-4096]
        return True


def _prefix_slots(prefix_cache: int | None, max_seqs: int) -> int:
    """Kept states at most (each holds a sequence slot): None = the default, 0 = off."""
    return max(16, max_seqs // 2) if prefix_cache is None else max(0, int(prefix_cache))

