"""Launch-ahead decode (issue 13 item 4): the paged engine's decode tok/s with ``launch_ahead`` on and
off, side by side on one engine (the flag is toggled between runs: same pool, same graphs),
interleaved, 3 rounds, next to the graph replay alone (decode_floor's ``timed_steps``: the floor the
engine step approaches when the host is off the critical path).

Points: SmolLM2-135M (the embedded GGUF, real weights) at batch 1 and 16, the Qwen2.5-1.5B shape
(random weights) at batch 1; 1K-token prompts, greedy, no EOS (every row decodes ``--tokens``).
The engine's step period is ``budgetllm.benchmarks.engine_bench.run_batch``'s (the matrix's own):
start-to-start of consecutive decode steps of the full batch in the engine's ``decode_log``, host
work included; tok/s = batch / period.

    timeout 180 python bench/launch_ahead.py --out bench/results/launch-ahead-h200.json --budget 160
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.decode_floor import timed_steps  # noqa: E402
from bench.decode_floor_attention import left  # noqa: E402
from bench.profile_decode import fill  # noqa: E402
from budgetllm.benchmarks.engine_bench import run_batch  # noqa: E402
from budgetllm.engine.rules import DENSE, RowRule  # noqa: E402


def engine_run(backend, loaded, batch: int, ctx: int, tokens: int, ahead: bool) -> dict:
    """``engine_bench.run_batch`` (the matrix's own measurement: random prompts, no EOS, the step
    period from the engine's ``decode_log``) with ``launch_ahead`` set."""
    backend.launch_ahead = ahead
    counts0 = dict(backend.ahead_counts)
    r = run_batch(backend, loaded, batch, ctx, tokens, 1.0)
    return {"ahead": ahead, "full_batch_steps": r.full_batch_steps, "step_ms": round(r.step_ms, 4),
            "tok_s": round(r.decode_tok_s, 1), "launched_ahead": backend.ahead_counts["launched"] - counts0["launched"],
            "void": backend.ahead_counts["void"] - counts0["void"]}


def point(name: str, loaded, batches: list[int], ctx: int, tokens: int, rounds: int, budget: float):
    """Yields one result per batch size (the engine is closed once the last is taken)."""
    from budgetllm.engine.paged.backend import PagedBackend

    c = loaded.config
    pages = max(batches) * c.num_hidden_layers * c.num_key_value_heads * ((ctx + tokens) // 16 + 4) + 4096
    backend = PagedBackend(loaded, max_seqs=max(batches), num_pages=pages, max_context=ctx + tokens + 64,
                           prefix_cache=0, window=256)
    try:
        for batch in batches:
            engine_run(backend, loaded, batch, ctx, 32, True)  # warm: compiles, first launches
            runs = []
            for r in range(rounds):
                if left(budget) < 15:
                    break
                for ahead in ((False, True) if r % 2 == 0 else (True, False)):  # interleaved, order alternating
                    runs.append(engine_run(backend, loaded, batch, ctx, tokens, ahead))
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
            yield res
    finally:
        backend.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/launch-ahead-h200.json")
    ap.add_argument("--budget", type=float, default=160.0)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from budgetllm.models import load_model
    from budgetllm.models.testing import random_model

    commit = Path(".gpu-commit").read_text().strip() if Path(".gpu-commit").exists() else "unknown"
    result = {"card": torch.cuda.get_device_name(), "commit": commit, "points": []}
    plan = [("smollm2-135m", lambda: load_model(None, device="cuda", dtype=torch.bfloat16), [1, 16]),
            ("qwen2.5-1.5b-shape", lambda: random_model("qwen2.5-1.5b"), [1])]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for name, load, batches in plan:
        if left(a.budget) < 30:
            result.setdefault("skipped", []).append(name)
            continue
        loaded = load()
        for res in point(name, loaded, batches, 1024, a.tokens, a.rounds, a.budget):
            result["points"].append(res)
            Path(a.out).write_text(json.dumps(result, indent=1))  # after every point: a cut run keeps them
        del loaded
        torch.cuda.empty_cache()
    Path(a.out).write_text(json.dumps(result, indent=1))
    print("wrote", a.out, flush=True)


if __name__ == "__main__":
    main()
