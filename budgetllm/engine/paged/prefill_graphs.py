"""CUDA graphs of small prefill chunks (one sequence, a few size buckets): short calls start fast.

An eager prefill launches every layer's kernels from Python (13 launches per layer,
``engine/paged/prefill.py``); for the chunks agents send most (a new message on top of a kept
state, a short prompt) that host work, not the GPU, sets the time to first token. A chunk of n
tokens on one sequence runs in the graph of the smallest bucket T >= n: the n real tokens go to
their slot, the T - n padding tokens go to a *scratch* slot as a second chunk (so no padding token
touches the real rows; it is empty when n = T), whose rows are released inside the same graph
(``release_rows``: the pages they took go back). Everything the
graph reads is a static buffer filled by one copy from pinned host memory, or GPU state
(``seq_pos``, the rows, the page allocator), so a replay needs no host values.

The scratch chunk takes pages while the graph runs; the engine uses a graph only when the pool has
``reserve_pages(n)`` free pages (its own chunk's dense bound plus the scratch's), else the eager path.
With ``emulate`` (CPU tests) the same padded body runs eagerly.
"""

from __future__ import annotations

import bisect
import math
import time

import numpy as np
import torch

from budgetllm.engine.paged.cuda_graphs import capturing, collector_off
from budgetllm.engine.rules import DENSE, RowRule
from budgetllm.kernels import release_rows

# up to 2K tokens, spaced by ~1.5x above 128 (docs/prefill-kernels.md, "Buckets"): padding rows
# cost GEMM time like real ones (a 384-token turn in a 512 bucket: +33%), while a bucket costs one
# capture at start-up (its graph shares the others' memory pool)
BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


class PrefillGraphs:
    def __init__(self, runner, scratch: int, warm: int, buckets=BUCKETS, emulate: bool = False):
        self.r, self.scratch, self.warm = runner, scratch, warm
        # a bucket's scratch chunk is a row of T tokens: no bucket beyond the pool's context
        self.buckets = [b for b in buckets if b <= runner.max_context] or [min(buckets)]
        self.emulate = emulate
        T, dev = max(buckets), runner.device
        pin = dev.type == "cuda"
        # one int64 buffer: ids [T] | pos [T] | code [T] | sinks [T] | period [T] | slots [2] | cu [3] | last [1] | inc [2]
        self.n_int = 5 * T + 8
        self.ibuf = torch.zeros(self.n_int, dtype=torch.int64, device=dev)
        L, H = runner.model.num_layers, runner.model.H
        self.thr = torch.zeros(L, T, H, dtype=torch.float64, device=dev)  # each (layer, KV head)'s threshold
        self.ihost = torch.zeros(self.n_int, dtype=torch.int64, pin_memory=pin)
        self.thost = torch.zeros(L, T, H, dtype=torch.float64, pin_memory=pin)
        self.inp, self.tnp = self.ihost.numpy(), self.thost.numpy()
        self.logits = torch.zeros(1, runner.model.vocab, dtype=torch.float32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_s = 0.0  # the start-up time all buckets' warm-ups and captures took
        lay = runner.layout
        self.scratch_pages = lay.rows_per_seq * (math.ceil(T / lay.page_size) + 1)  # the largest bucket's

    def reserve_pages(self, n: int) -> int:
        """Free pages a graphed chunk of ``n`` tokens needs at most: its own rows + the scratch rows
        (the T - n padding tokens of its bucket, dense)."""
        lay, T = self.r.layout, self.bucket_for(n) or max(self.buckets)
        return lay.rows_per_seq * (math.ceil((T - n) / lay.page_size) + math.ceil(n / lay.page_size) + 2)

    def bucket_for(self, n: int) -> int | None:
        i = bisect.bisect_left(self.buckets, n)  # T >= n (an empty scratch chunk when T = n)
        return self.buckets[i] if i < len(self.buckets) else None

    def _views(self, T: int):
        Tm, b = max(self.buckets), self.ibuf
        ids, pos, code, sinks, period = (b[i * Tm:i * Tm + T] for i in range(5))
        tail = b[5 * Tm:]
        # the rule fields stay int64 (the decisions kernel reads any int); the kernels' int32 arguments are cast
        return ids, pos, code, sinks, period, tail[0:2].int(), tail[2:5].int(), tail[5:6], tail[6:8].int()

    def fill(self, slot: int, toks: list[int], p0: int, rule: RowRule, T: int) -> None:
        n, Tm, h = len(toks), max(self.buckets), self.inp
        h[:n] = toks
        h[n:T] = 0
        h[Tm:Tm + n] = np.arange(p0, p0 + n)
        h[Tm + n:Tm + T] = np.arange(T - n)  # the scratch chunk starts at position 0
        for i, (real, pad) in enumerate(((rule.code, DENSE), (rule.sinks, 0), (rule.period, 1))):
            h[(2 + i) * Tm:(2 + i) * Tm + n] = real
            h[(2 + i) * Tm + n:(2 + i) * Tm + T] = pad
        h[5 * Tm:5 * Tm + 8] = (slot, self.scratch, 0, n, T, n - 1, n, 0)
        self.tnp[:, :n] = rule.thr_grid(self.tnp.shape[0], self.tnp.shape[2]).numpy()[:, None]
        self.tnp[:, n:T] = math.inf
        self.ibuf.copy_(self.ihost, non_blocking=True)
        self.thr.copy_(self.thost, non_blocking=True)

    def body(self, T: int) -> None:
        r, kv = self.r, self.r.kv
        ids, pos, code, sinks, period, slots, cu, last, inc = self._views(T)
        h = r.prefill_body(ids, pos, code, sinks, period, self.thr[:, :T], slots, cu, T, per_layer=True)
        release_rows(kv, slots[1:])  # the scratch chunk's rows (its position back to 0)
        r.compute_stats(advance=(slots[:1], inc[:1]))  # and the real slot's position += n, in the same launch
        self.logits.copy_(r.model.logits(h[last]))

    @torch.inference_mode()
    def capture(self) -> None:
        if self.emulate:
            return
        t0 = time.perf_counter()
        with collector_off():  # one collection for all buckets, none inside a capture
            self._capture()
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - t0

    def _capture(self) -> None:
        pool = None
        for T in reversed(self.buckets):  # the largest first: its memory pool serves the others
            self.fill(self.warm, [0], 0, RowRule(), T)  # compiles this bucket's kernels eagerly
            self.body(T)
            release_rows(self.r.kv, torch.tensor([self.warm], dtype=torch.int32, device=self.r.device))
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with capturing(g, pool):  # the collector off: engine/paged/cuda_graphs.py
                self.body(T)
            pool = pool or g.pool()
            self.graphs[T] = g

    def run(self, slot: int, toks: list[int], p0: int, rule: RowRule, T: int) -> torch.Tensor:
        """Prefill one chunk through bucket ``T``; returns its last token's logits [1, V]."""
        self.fill(slot, toks, p0, rule, T)
        if self.emulate:
            self.body(T)
        else:
            self.graphs[T].replay()
        return self.logits
