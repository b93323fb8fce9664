"""Helpers of the paged-engine tests (CPU and GPU): concurrent calls, raw requests, a resumed turn."""

from __future__ import annotations

import threading
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
