"""The agent-loop benchmark (``budgetllm bench --only agent``): what an agent feels, call by call.

* **Agent loop**: a scripted multi-step agent. Turn 1 is a system prompt and a task; every later
  turn appends the previous answer *re-rendered* (cut at max_tokens, its last tokens replaced by
  end-of-turn markup, as a chat template does), a tool call and a tool result, until the history
  reaches 8K (Qwen2.5-1.5B shape) or 32K tokens (Qwen3-8B shape). Per turn: time to first token,
  prompt tokens served from the compressed cache (from turn 2 on: from the state kept at the
  previous prompt's end), pages held for reuse, and the end-to-end seconds of the loop, against the
  same loop with reuse off and HF ``generate`` (its time to first token = a full prefill).
* **Thinking burst**: 16 and 48 concurrent calls, 512 tokens each, with a thinking budget (448) and
  without: the engine applies budgets itself, so the tok/s should not drop.
* **Call latency**: time to first token of a fresh 1K-token prompt and of a 1-token call (median).

Random-weight shapes use the forced eviction pattern (``engine_bench.rule_for``); the embedded
SmolLM2 (real weights, chat template, thinking stripped from answers) runs when it is installed.
"""

from __future__ import annotations

import statistics
import threading
import time

import torch

from budgetllm.benchmarks.engine_bench import make_request
from budgetllm.engine.thinking import ThinkingController

MARKUP = [7, 8]  # what the template writes after a (cut) answer: the loop's "re-rendering"


def _ids(g: torch.Generator, n: int, vocab: int) -> list[int]:
    return torch.randint(100, min(30000, vocab), (max(0, n),), generator=g).tolist()


def run_loop(backend, loaded, history: int, steps: int, answer_tokens: int = 64, cr: float = 8,
             seed: int = 0, hf=None, turn_tokens: int | None = None, system_tokens: int = 1024) -> dict:
    """One scripted agent conversation on ``backend`` (``hf``: also time HF's prefill per turn).

    ``seconds`` is the loop's own wall time (HF's prefills, when ``hf`` is given, are timed apart:
    ``hf_seconds``), so a loop run with ``hf`` compares with one run without it.

    ``turn_tokens`` None: a ``system_tokens`` (1K) system prompt and turns that grow the history to ``history`` in
    ``steps`` (big tool results: each turn adds ~history/steps). ``turn_tokens`` given (the full
    mode, a realistic agent): the first prompt is the long context an agent has built by then
    (system prompt, tool schemas, earlier work) and every later turn adds ``turn_tokens``: the
    previous answer re-rendered, a 32-token tool call and a tool result of the rest, so the last
    prompt is ``history`` tokens and a reused turn prefills a few hundred tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab = loaded.config.vocab_size
    if turn_tokens is None:
        system = system_tokens  # a system prompt with tool schemas
        per_turn = max(64, (history - system) // max(1, steps - 1) - answer_tokens - 32)  # the last prompt ~ history
    else:
        per_turn = max(1, turn_tokens - answer_tokens - 32)  # the tool result (answer + call + result added)
        system = history - (steps - 1) * (answer_tokens + 32 + per_turn)
    prompt = _ids(g, system, vocab)
    turns, t_loop, hf_seconds = [], time.perf_counter(), 0.0
    prev_history = prev_prompt = 0
    for i in range(steps):
        req = make_request(loaded, len(prompt), answer_tokens, cr, seed=i, prompt=list(prompt),
                           window=backend.window)
        t0 = time.perf_counter()
        answer = [s.token_id for s in backend.run(req) if s.finished is None]
        seconds = time.perf_counter() - t0
        st = backend.pool_stats()
        row = {"turn": i + 1, "prompt_tokens": len(prompt), "history_tokens": prev_history,
               "cached_tokens": req.cached_tokens, "prefilled_tokens": len(prompt) - req.cached_tokens,
               "added_tokens": len(prompt) - prev_prompt, "ttft_s": req.prefill_seconds, "seconds": seconds,
               "pages_used": st["pages_used"], "prefix_pages": st.get("prefix_pages", 0),
               "phases_ms": {k: round(1000 * v, 3) for k, v in req.phases.items()}}
        if hf is not None:  # outside the loop's own seconds (HF is the baseline, not the agent)
            t_hf = time.perf_counter()
            row["hf_ttft_s"] = hf_ttft(hf, prompt)
            hf_seconds += time.perf_counter() - t_hf
        turns.append(row)
        prev_history, prev_prompt = len(prompt) + len(answer), len(prompt)
        prompt = prompt + answer[:-2] + MARKUP + _ids(g, 32, vocab) + _ids(g, per_turn, vocab)
    return {"turns": turns, "seconds": time.perf_counter() - t_loop - hf_seconds, "hf_seconds": hf_seconds}


@torch.inference_mode()
def hf_ttft(model, prompt: list[int]) -> float:
    """HF ``generate`` (default dense cache) to its first token: a prefill of the whole prompt."""
    ids = torch.tensor([prompt], device=model.device)
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
    sync()
    return time.perf_counter() - t0


def loop_summary(reuse: dict, fresh: dict) -> dict:
    """Turn >= 2: share of the history served from the cache; TTFT speed-up against no reuse."""
    later = list(zip(reuse["turns"][1:], fresh["turns"][1:], strict=True))
    served = [r["cached_tokens"] / r["history_tokens"] for r, _ in later if r["history_tokens"]]
    speed = [f["ttft_s"] / max(r["ttft_s"], 1e-9) for r, f in later]
    hf = [r["hf_ttft_s"] / max(r["ttft_s"], 1e-9) for r, _ in later if "hf_ttft_s" in r]
    last = later[-1] if later else None
    tail = speed[-3:]  # the last turns: the longest histories
    return {"history_served_min": min(served, default=None),
            "ttft_speedup_last3_median": statistics.median(tail) if tail else None,
            "prefilled_tokens_per_turn": [r["prefilled_tokens"] for r in reuse["turns"]],
            "ttft_speedup_median": statistics.median(speed) if speed else None,
            "ttft_speedup_last": speed[-1] if speed else None,
            "ttft_last_s": last[0]["ttft_s"] if last else None,
            "ttft_last_no_reuse_s": last[1]["ttft_s"] if last else None,
            "hf_ttft_ratio_median": statistics.median(hf) if hf else None,
            "end_to_end_s": reuse["seconds"], "end_to_end_no_reuse_s": fresh["seconds"],
            "hf_seconds": reuse.get("hf_seconds", 0.0) + fresh.get("hf_seconds", 0.0)}


def _think_encode(vocab: int):
    """Stable fake token ids for the controller's tags and hand-off (random-weight models)."""
    return lambda text: [(1000 + 7 * i + len(text)) % vocab for i in range(max(1, len(text) // 4))]


def burst(backend, loaded, n: int, budget: int | None, max_tokens: int = 512, prompt: int = 256) -> dict:
    """``n`` concurrent calls of ``max_tokens`` each (``budget``: a thinking budget); tok/s over the burst."""
    encode = _think_encode(loaded.config.vocab_size)
    reqs = []
    for i in range(n):
        r = make_request(loaded, prompt, max_tokens, 8, seed=1000 + i, window=backend.window)
        r.controller = ThinkingController(budget, max_tokens - budget if budget else 0, max_tokens, encode=encode)
        reqs.append(r)
    counts = [0] * n

    def consume(i: int) -> None:
        for s in backend.run(reqs[i]):
            if s.finished is None:
                counts[i] += 1

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"calls": n, "thinking_budget": budget, "tokens": sum(counts), "seconds": wall,
            "tok_s": sum(counts) / wall,
            "reasoning_tokens": sum(r.controller.reasoning_tokens for r in reqs)}


def call_latency(backend, loaded, repeats: int = 7) -> dict:
    """Median TTFT of fresh 1K-token prompts and the wall time of 1-token calls (16-token prompts)."""
    def one(length: int, seed: int, new: int) -> tuple[float, float, dict]:
        req = make_request(loaded, length, new, 1, seed=seed, window=backend.window)
        t0 = time.perf_counter()
        for _ in backend.run(req):
            pass
        return req.prefill_seconds, time.perf_counter() - t0, dict(req.phases)

    for s in range(2):  # warm-up (kernels specialise on the first calls)
        one(1024, 500 + s, 1)
        one(16, 600 + s, 1)
    k = [one(1024, 700 + s, 1) for s in range(repeats)]
    o = [one(16, 800 + s, 1) for s in range(repeats)]
    return {"ttft_1k_ms": 1000 * statistics.median(x[0] for x in k),
            "one_token_call_ms": 1000 * statistics.median(x[1] for x in o),
            "one_token_phases_s": o[len(o) // 2][2], "ttft_1k_phases_s": k[len(k) // 2][2]}
