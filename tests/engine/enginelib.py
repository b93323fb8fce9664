"""Helpers of the paged-engine tests (CPU and GPU): concurrent calls, raw requests, a resumed turn."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable


def run_concurrently(fn: Callable[[int], object], n: int, timeout: float = 120.0) -> tuple[dict, list]:
    """``fn(i)`` for i in range(n), each on its own thread, all started before any is joined.

    Returns ({i: result} of the calls that returned, [exceptions raised by the others])."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the test decides what a failure means
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return results, errors


def request(loaded, prompt: list[int], compression: float, max_tokens: int):
    """A backend-level greedy request: the native DMS rule (logit > 0) above CR 1, dense at CR 1."""
    from budgetllm.accounting.meter import KVMeter, KVShape
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.request import GenerationRequest
    from budgetllm.engine.thinking import ThinkingController
    from budgetllm.types import SamplingParams

    cfg = loaded.config
    rule = EvictionRule("dms", window=loaded.dms.window, threshold=0.0) if compression > 1 else EvictionRule()
    shape = KVShape(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, 4)
    return GenerationRequest(prompt_ids=list(prompt), rule=rule, sampling=SamplingParams(),
                             controller=ThinkingController(None, 0, max_tokens, encode=lambda s: []),
                             meter=KVMeter(shape, compression, rule.mode), eos_ids=set())


def assert_next_turn_matches(ref, backend, prompt: list[int], extra: int, max_tokens: int) -> None:
    """Turn 2 = turn 1's prompt + its answer + ``extra`` new tokens, on a backend that parks turn 1:
    the same tokens and accounting as the reference prefilling turn 2 from scratch, via one prefix hit."""
    loaded = ref.loaded
    turn1 = [s.token_id for s in backend.run(request(loaded, prompt, 8, max_tokens)) if s.finished is None]
    prompt2 = prompt + turn1 + list(range(2000, 2000 + extra))
    hits = backend.pool_stats()["prefix_hits"]
    req_ref, req_paged = request(loaded, prompt2, 8, max_tokens), request(loaded, prompt2, 8, max_tokens)
    from budgetllm.engine.reference.backend import ReferenceBackend

    scratch = ReferenceBackend(loaded, prefix_cache=False)  # the whole prompt, prefilled from scratch
    expected = [s.token_id for s in scratch.run(req_ref) if s.finished is None]
    got = [s.token_id for s in backend.run(req_paged) if s.finished is None]
    assert got == expected and backend.pool_stats()["prefix_hits"] == hits + 1 and req_paged.cached_tokens > 0
    a, b = req_ref.meter.result(), req_paged.meter.result()
    assert (a.live_bytes, a.logical_bytes, a.kv_bytes_read) == (b.live_bytes, b.logical_bytes, b.kv_bytes_read)


def all_pages_back(backend) -> None:
    """Release the kept states (conversation reuse) and check that every page is free on the device."""
    backend.clear_prefix_cache()
    for _ in range(200):
        if backend.pool_stats()["parked"] == 0 and backend._inbox.empty():
            break
        time.sleep(0.02)
    time.sleep(0.05)
    stats = backend.pool_stats()
    assert stats["active"] == 0 and stats["parked"] == 0
    assert backend.device_free_pages_now() == stats["pages_total"] == stats["pages_free"]


def run_batch(backend, reqs: list, stop_after: dict | None = None) -> list[tuple]:
    """Queue every request before the engine thread takes any, consume each on its own thread (the
    consumer of request i closes its stream after ``stop_after[i]`` tokens: a cancel), and return
    per request (tokens, finish reason, usage, cached tokens). The engine's sampler is reseeded first
    (seeded sampling draws one stream for the batch: each run starts from the same state)."""
    stop_after = stop_after or {}
    settle(backend)  # restarted below, once every request is queued
    backend.runner.sampler.generator.manual_seed(1234)  # each run from the same random state
    gens = [backend.run(r) for r in reqs]
    real = type(backend)._ensure_thread
    backend._ensure_thread = lambda: None  # run() queues its request; the thread starts below
    out: dict[int, tuple] = {}
    started = threading.Barrier(len(reqs) + 1)

    def consume(i: int) -> None:
        toks, fin = [], None
        g = gens[i]
        started.wait()
        while backend._inbox.qsize() < i:  # queued in order: the batch's rows are in this order
            time.sleep(0.002)
        for step in g:
            if step.finished is not None:
                fin = step.finished
                break
            toks.append(step.token_id)
            if len(toks) == stop_after.get(i, -1):
                g.close()  # cancels the request
                fin = "closed"
                break
        # a closed stream's usage counts the steps the engine ran before it saw the cancel: a race
        out[i] = (toks, fin, None if fin == "closed" else reqs[i].meter.result(), reqs[i].cached_tokens)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    started.wait()
    while backend._inbox.qsize() < len(reqs):
        time.sleep(0.005)
    del backend._ensure_thread
    real(backend)
    for t in threads:
        t.join(timeout=300)
    settle(backend)
    return [out[i] for i in range(len(reqs))]


def settle(backend) -> None:
    """Stop the engine thread once it has applied every queued command (the next call starts it
    again): nothing of this engine runs afterwards (the Triton interpreter is not thread-safe, so two
    engines must not run kernels at once on the CPU)."""
    if backend._thread is not None and backend._thread.is_alive():
        backend._inbox.put(("stop", None))
        backend._thread.join(timeout=120)


READBACKS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def host_round_trips(monkeypatch, builders: bool = False):
    """Inside the block, record ``(name, file, line)`` of every call from budgetllm code that reads a
    tensor back to the host (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)``, ...) and, with
    ``builders``, that builds one from host data (``torch.tensor`` / ``as_tensor``). Calls from torch
    or the Triton interpreter are not counted (frames outside budgetllm)."""
    import torch

    hits: list = []

    def guard(name, orig):
        def call(*a, **k):
            f = sys._getframe(1)
            if "budgetllm" in f.f_code.co_filename.replace("\\", "/").split("/"):
                hits.append((name, f.f_code.co_filename.rsplit("/", 1)[-1], f.f_lineno))
            return orig(*a, **k)
        return call

    with monkeypatch.context() as m:
        for name in READBACKS:
            m.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
        if builders:
            m.setattr(torch, "tensor", guard("torch.tensor", torch.tensor))
            m.setattr(torch, "as_tensor", guard("torch.as_tensor", torch.as_tensor))
        yield hits
