"""Launch-ahead decode (issue 13 item 4): the paged engine's decode tok/s with ``launch_ahead`` on and
off, side by side on one engine (the flag is toggled between runs: same pool, same graphs),
interleaved, 3 rounds, next to the graph replay alone (decode_floor's ``timed_steps``: the floor the
engine step approaches when the host is off the critical path).

Points: SmolLM2-135M (the embedded GGUF, real weights) at batch 1 and 16, the Qwen2.5-1.5B shape
(random weights) at batch 1; 1K-token prompts, greedy, no EOS (every row decodes ``--tokens``).
The engine's step period is read from its ``decode_log`` (the start times of consecutive decode
steps of the full batch): tok/s = batch / period.

    python bench/launch_ahead.py --out bench/results/launch-ahead-h200.json --budget 170
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.decode_floor import timed_steps  # noqa: E402
from bench.decode_floor_attention import left  # noqa: E402
from bench.profile_decode import fill  # noqa: E402
from budgetllm.engine.rules import DENSE, RowRule  # noqa: E402


def _request(loaded, prompt: list[int], max_tokens: int):
    """A backend-level greedy request, dense rule, no EOS: it decodes exactly ``max_tokens`` tokens."""
    from budgetllm.accounting.meter import KVMeter, KVShape
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.request import GenerationRequest
    from budgetllm.engine.thinking import ThinkingController
    from budgetllm.types import SamplingParams

    c = loaded.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return GenerationRequest(prompt_ids=prompt, rule=EvictionRule(), sampling=SamplingParams(),
                             controller=ThinkingController(None, 0, max_tokens, encode=lambda s: []),
                             meter=KVMeter(KVShape(c.num_hidden_layers, c.num_key_value_heads, hd, 2), 1.0, "dense"),
                             eos_ids=set())


def engine_run(backend, loaded, batch: int, ctx: int, tokens: int, ahead: bool, seed: int) -> dict:
    """``batch`` requests of ``ctx`` random prompt tokens, ``tokens`` new tokens each, all at once."""
    backend.launch_ahead = ahead
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(100, 30000, (ctx,), generator=g).tolist() for _ in range(batch)]
    counts0 = dict(backend.ahead_counts)
    t_start = time.perf_counter()
    threads = [threading.Thread(target=lambda p=p: [s for s in backend.run(_request(loaded, p, tokens))])
               for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = sorted((e for e in backend.decode_log if e[1] >= t_start and e[0] == batch), key=lambda e: e[5])
    # consecutive step numbers only (a prefill step between two decode steps breaks a run)
    gaps = [b[1] - a[1] for a, b in zip(log, log[1:], strict=False) if b[5] == a[5] + 1]
    period = statistics.median(gaps)
    return {"ahead": ahead, "steps": len(log), "step_ms_median": round(1000 * period, 4),
            "step_ms_mean": round(1000 * statistics.fmean(gaps), 4), "tok_s": round(batch / period, 1),
            "launched_ahead": backend.ahead_counts["launched"] - counts0["launched"],
            "void": backend.ahead_counts["void"] - counts0["void"]}


def point(name: str, loaded, batches: list[int], ctx: int, tokens: int, rounds: int, budget: float) -> list[dict]:
    from budgetllm.engine.paged.backend import PagedBackend

    c = loaded.config
    pages = max(batches) * c.num_hidden_layers * c.num_key_value_heads * ((ctx + tokens) // 16 + 4) + 4096
    backend = PagedBackend(loaded, max_seqs=max(batches), num_pages=pages, max_context=ctx + tokens + 64,
                           prefix_cache=0)
    out = []
    try:
        for batch in batches:
            engine_run(backend, loaded, batch, ctx, 32, True, 99)  # warm: compiles, first launches
            runs = []
            for r in range(rounds):
                if left(budget) < 15:
                    break
                for ahead in ((False, True) if r % 2 == 0 else (True, False)):  # interleaved, order alternating
                    runs.append(engine_run(backend, loaded, batch, ctx, tokens, ahead, 1000 * r + batch))
            on = [x["tok_s"] for x in runs if x["ahead"]]
            off = [x["tok_s"] for x in runs if not x["ahead"]]
            res = {"model": name, "batch": batch, "context": ctx, "new_tokens": tokens, "runs": runs,
                   "tok_s_on_median": statistics.median(on) if on else None,
                   "tok_s_off_median": statistics.median(off) if off else None}
            if on and off:
                res["speedup_median"] = round(statistics.median(on) / statistics.median(off), 3)
            # the graph replay alone at this context, on the same runner (its slots are free now)
            runner = backend.runner
            fill(runner, batch, ctx, RowRule(DENSE))
            rows = [(s, 1000 + s, RowRule(DENSE)) for s in range(batch)]
            res["replay_ms"] = round(timed_steps(runner, rows), 4)
            res["replay_tok_s"] = round(batch * 1000 / res["replay_ms"], 1)
            runner.release(list(range(batch)))
            print(json.dumps({k: v for k, v in res.items() if k != "runs"}), flush=True)
            out.append(res)
    finally:
        backend.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/launch-ahead-h200.json")
    ap.add_argument("--budget", type=float, default=170.0)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from budgetllm.models import load_model
    from budgetllm.models.testing import random_model

    commit = Path(".gpu-commit").read_text().strip() if Path(".gpu-commit").exists() else "unknown"
    result = {"card": torch.cuda.get_device_name(), "commit": commit, "points": []}
    plan = [("smollm2-135m", lambda: load_model(None, device="cuda", dtype=torch.bfloat16), [1, 16]),
            ("qwen2.5-1.5b-shape", lambda: random_model("qwen2.5-1.5b"), [1])]
    for name, load, batches in plan:
        if left(a.budget) < 30:
            break
        loaded = load()
        result["points"] += point(name, loaded, batches, 1024, a.tokens, a.rounds, a.budget)
        del loaded
        torch.cuda.empty_cache()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print("wrote", a.out, flush=True)


if __name__ == "__main__":
    main()
