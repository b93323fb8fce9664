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
import warnings
from collections.abc import Iterator

from budgetllm.engine.paged.block_manager import BlockManager, PoolGeometry
from budgetllm.engine.paged.engine_loop import EngineLoop
from budgetllm.engine.paged.handle import Handle, row_rule_for
from budgetllm.engine.paged.model_runner import ModelRunner, RunnerConfig
from budgetllm.engine.paged.scheduler import Scheduler
from budgetllm.engine.paged.sequence import Sequence
from budgetllm.engine.prefix_tree import PrefixTree
from budgetllm.engine.request import GenerationRequest, StepOutput
from budgetllm.errors import InvalidRequestError
from budgetllm.models.loading import LoadedModel


class PagedBackend(EngineLoop):
    name = "paged"

    def __init__(self, loaded: LoadedModel, *, max_seqs: int = 128, page_size: int = 16,
                 memory_fraction: float = 0.85, num_pages: int | None = None, max_prefill_tokens: int = 4096,
                 cuda_graphs: bool = True, window: int | None = None, max_context: int | None = None,
                 seed: int | None = None, emulate_graphs: bool = False, prefix_cache: int | None = None,
                 prefix_cache_bytes: int | None = None, gpu_memory_utilization: float | None = None,
                 launch_ahead: bool = True):
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
        # decode step N+1 launched before step N is read (engine/paged/launch_ahead.py); may be toggled
        self.launch_ahead = launch_ahead
        self._ahead = None  # the step launched ahead, not yet read
        self.ahead_counts = {"launched": 0, "void": 0}  # decode steps launched ahead; of them, void

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
        if self._thread is None or not self._thread.is_alive():
            self.runner.close()  # graphs <-> runner cycles go now, not at a collection inside a later capture
        self.runner = self._reference = self.model = None


def _prefix_slots(prefix_cache: int | None, max_seqs: int) -> int:
    """Kept states at most (each holds a sequence slot): None = the default, 0 = off."""
    return max(16, max_seqs // 2) if prefix_cache is None else max(0, int(prefix_cache))

