"""CUDA graphs of the decode step, one per batch-size bucket (nano-vllm style).

Kernel launches dominate a decode step on small models (docs/gpu-notes.md: 69 ms eager vs a 1.2 ms
bandwidth floor), so each bucket's whole step (embedding, every layer's GEMMs, store-and-evict and
paged attention, the LM head) is captured once and replayed. Everything a step reads is either a
static buffer of the runner (token ids, slots, rule parameters) or GPU state (``seq_pos``, row
lengths, block tables, the page allocator), so a replay needs no host values. A batch is padded to
the next bucket with frozen padding slots (see ``budgetllm.cache.pool``) whose rows never allocate.

Each bucket fixes ``num_splits`` of the decode attention from shapes only, as the graph requires.
Everything a first launch does (Triton compiles and module loads, the driver's local-memory growth,
cuBLAS workspaces) happens before capture, in an eager warm-up of exactly the bucket's rows and
num_splits (the gemv tile rows and Triton's integer specialisations depend on the row count):
padding slots, then free sequence slots that are released again (``ModelRunner.warm_decode``).

A capture is invalidated by any forbidden call of this process while it runs, and the one seen on
the H200 was the cyclic garbage collector destroying another (closed) engine's graphs mid-capture
(``cudaGraphExecDestroy``: "operation not permitted when stream is capturing"). ``capturing``
collects first and keeps the collector off during the capture; ``thread_local`` capture mode lets
other threads (another engine's loop) allocate meanwhile.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def collector_off() -> Iterator[None]:
    """The garbage collector run once, then off (a loop of captures pays one collection)."""
    enabled = gc.isenabled()
    if enabled:
        gc.collect()
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def capturing(graph: torch.cuda.CUDAGraph, pool=None) -> Iterator[None]:
    """``torch.cuda.graph(graph, pool)`` in thread-local mode with the collector off (``collector_off``)."""
    with collector_off(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        yield


def bucket_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, 16, then every multiple of 16 up to max_bs (always including max_bs)."""
    out = [b for b in (1, 2, 4, 8) if b < max_bs]
    out += list(range(16, max_bs, 16))
    out.append(max_bs)
    return sorted(set(out))


class DecodeGraphs:
    def __init__(self, runner, buckets: list[int], emulate: bool = False):
        self.runner = runner
        self.buckets = buckets
        self.emulate = emulate  # CPU tests: same buckets and padding, replay runs the body eagerly
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def bucket_for(self, batch: int) -> int | None:
        i = bisect.bisect_left(self.buckets, batch)
        if i == len(self.buckets):
            return None  # larger than every graph: run eagerly
        bs = self.buckets[i]
        return bs if bs - batch <= len(self.runner.pad_slots) else None

    @torch.inference_mode()
    def capture(self) -> None:
        r = self.runner
        with collector_off():
            self._capture(r)
        if not self.emulate:
            torch.cuda.synchronize()

    def _capture(self, r) -> None:
        for bs in reversed(self.buckets):  # the largest first: its memory pool serves the others
            ns = r.num_splits(bs)
            r.warm_decode(bs, ns)  # this very specialisation, eagerly; the pool is left as it was
            if self.emulate:
                continue
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with capturing(g, self.pool):
                r.decode_body(bs, ns)
            if self.pool is None:
                self.pool = g.pool()
            self.graphs[bs] = g

    def replay(self, bs: int) -> None:
        if self.emulate:
            self.runner.decode_body(bs, self.runner.num_splits(bs))
        else:
            self.graphs[bs].replay()
