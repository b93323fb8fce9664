"""Drive a backend with a batch of concurrent requests and measure decode rate, TTFT and memory."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import torch

from budgetllm.accounting.meter import KVMeter, KVShape
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.request import GenerationRequest
from budgetllm.engine.thinking import ThinkingController
from budgetllm.types import SamplingParams


@dataclass
class BatchResult:
    batch: int
    context: int
    compression: float
    decode_tok_s: float
    step_ms: float
    ttft_s: float
    peak_pages: int
    peak_reserved_bytes: int
    live_bytes_end: int
    logical_bytes_end: int
    kv_read_per_step: float
    achieved_compression: float
    full_batch_steps: int = 0  # decode steps timed (every request of the batch in the step)
    preemptions: int = 0  # while this batch ran (a point with preemptions did not fit the pool)


def kv_shape_of(loaded) -> KVShape:
    cfg = loaded.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return KVShape(cfg.num_hidden_layers, cfg.num_key_value_heads, d, loaded.dtype.itemsize)


# The DMS paper's default window (and our SmolLM2 adapter's). Every kept row holds the window, so
# the window bounds the pages saved: (T - w) / CR + w entries per row of T tokens (see bench/NOTES.md).
BENCH_WINDOW = 256


def rule_for(compression: float, window: int = BENCH_WINDOW) -> EvictionRule:
    """Random-weight models: every head evicts exactly 1 - 1/CR of its tokens (the forced pattern)."""
    if compression <= 1:
        return EvictionRule("dense", window=window)
    return EvictionRule("forced", window=window, period=int(round(compression)))


def make_request(loaded, prompt_len: int, new_tokens: int, compression: float, seed: int,
                 window: int = BENCH_WINDOW, rule: EvictionRule | None = None,
                 prompt: list[int] | None = None) -> GenerationRequest:
    """Random token ids (or ``prompt``), the forced pattern (or ``rule``: real DMS decisions)."""
    if prompt is None:
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(100, min(30000, loaded.config.vocab_size), (prompt_len,), generator=g).tolist()
    ctrl = ThinkingController(None, 0, new_tokens, encode=lambda s: [])
    return GenerationRequest(prompt_ids=prompt, rule=rule or rule_for(compression, window), sampling=SamplingParams(),
                             controller=ctrl, meter=KVMeter(kv_shape_of(loaded), compression, "forced"),
                             eos_ids=set())


def run_batch(backend, loaded, batch: int, context: int, new_tokens: int, compression: float,
              window: int = BENCH_WINDOW, rule: EvictionRule | None = None,
              prompts: list[list[int]] | None = None) -> BatchResult:
    """``batch`` requests of ``context`` prompt tokens, each decoding ``new_tokens``, all at once
    (``prompts``/``rule``: real text and real DMS decisions instead of random ids and the forced pattern)."""
    reqs = [make_request(loaded, context, new_tokens, compression, seed=i, window=window, rule=rule,
                         prompt=prompts[i % len(prompts)] if prompts else None) for i in range(batch)]
    first: list[float] = [0.0] * batch
    last: list[float] = [0.0] * batch
    counts = [0] * batch
    peak = {"pages": 0, "bytes": 0}
    done = threading.Event()

    def consume(i: int) -> None:
        for step in backend.run(reqs[i]):
            if step.finished:
                break
            now = time.perf_counter()
            if counts[i] == 0:
                first[i] = now
            counts[i] += 1
            last[i] = now

    def watch() -> None:
        while not done.is_set():
            stats = backend.pool_stats()
            peak["pages"] = max(peak["pages"], int(stats.get("pages_used", 0)))
            peak["bytes"] = max(peak["bytes"], int(stats.get("reserved_bytes", stats.get("used_bytes", 0))))
            time.sleep(0.005)

    log = getattr(backend, "decode_log", None)
    pre0 = backend.pool_stats().get("preemptions", 0)
    start = time.perf_counter()
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(batch)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    kv = [r.meter.result() for r in reqs]
    steps = max(counts) - 1
    full = _full_batch_intervals(log, batch, start) if log is not None else []
    if full:  # the engine's own clock: start-to-start of consecutive decode steps over the whole batch
        step_s = statistics.median_high(full)
        tok_s = batch / step_s
    else:  # a backend without a step log: the window where every request is decoding
        t0 = max(first)
        span = max(max(last) - t0, 1e-9)
        step_s, tok_s = span / max(steps, 1), (sum(counts) - batch) / span if steps > 0 else 0.0
    return BatchResult(
        batch=batch, context=context, compression=compression,
        decode_tok_s=tok_s, step_ms=1000 * step_s, full_batch_steps=len(full),
        preemptions=backend.pool_stats().get("preemptions", 0) - pre0,
        ttft_s=sum(f - start for f in first) / batch, peak_pages=peak["pages"],
        peak_reserved_bytes=max(peak["bytes"], sum(k.reserved_bytes for k in kv)),
        live_bytes_end=sum(k.live_bytes for k in kv), logical_bytes_end=sum(k.logical_bytes for k in kv),
        # bytes one step over the whole batch reads: the mean per request-step, times the batch
        kv_read_per_step=batch * sum(k.kv_bytes_read for k in kv) / max(1, sum(counts) - batch),
        achieved_compression=sum(k.logical_bytes for k in kv) / max(1, sum(k.live_bytes for k in kv)),
    )


def _full_batch_intervals(log, batch: int, since: float) -> list[float]:
    """Seconds between the starts of consecutive engine steps that were both decode steps over the
    whole batch (host work included; no prefill chunk in between), after two warm-up steps."""
    rows = [e for e in log if e[1] >= since and e[0] == batch][2:]
    return [b[1] - a[1] for a, b in zip(rows, rows[1:], strict=False) if b[5] == a[5] + 1]


def _one_resumed_turn(backend, loaded, context: int, seed: int) -> tuple[tuple[float, dict], tuple[float, dict]]:
    """(TTFT, its phases) of turn 2 resumed on the parked cache, then prefilled from scratch."""
    w = getattr(backend, "window", BENCH_WINDOW)  # the pool's window (one per pool)
    first = make_request(loaded, context, 32, 8, seed=seed, window=w)
    answer = [s.token_id for s in backend.run(first) if s.finished is None]
    prompt2 = first.prompt_ids + answer + list(range(5000, 5256))
    ttft = []
    for name in ("resumed", "full"):
        if name == "full":
            backend.clear_prefix_cache()
        req = make_request(loaded, len(prompt2), 8, 8, seed=0, prompt=list(prompt2), window=w)
        for _ in backend.run(req):
            pass
        ttft.append((req.prefill_seconds, dict(req.phases)))
    backend.clear_prefix_cache()
    return ttft[0], ttft[1]


def resumed_turn_ttft(backend, loaded, context: int, repeats: int = 3) -> dict:
    """TTFT of an agent's second turn (turn 1 + its answer + 256 new tokens) with the first turn's
    compressed cache parked in ``backend`` (needs ``prefix_cache`` > 0), and again from scratch.

    One untimed conversation first (a server is warm: the chunk-on-an-existing-row kernels compile
    on their first call), then the median of ``repeats`` conversations."""
    _one_resumed_turn(backend, loaded, context, seed=99)
    runs = [_one_resumed_turn(backend, loaded, context, seed=100 + i) for i in range(repeats)]
    resumed = statistics.median_high(r[0] for r, _ in runs)
    full = statistics.median_high(f[0] for _, f in runs)
    return {"resumed_ttft_s": resumed, "full_ttft_s": full, "speedup": full / max(resumed, 1e-9),
            "runs": [{"resumed_ttft_s": r[0], "full_ttft_s": f[0], "resumed_phases_s": r[1], "full_phases_s": f[1]}
                     for r, f in runs]}
