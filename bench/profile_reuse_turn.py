"""Where a reused agent turn's time to first token goes on the GPU (issue 12's 1.5B / 8K miss).

    python bench/profile_reuse_turn.py [--shape qwen2.5-1.5b] [--out bench/results]   # ~1 minute

The agent loop of ``budgetllm bench --only agent`` (full mode: a long first prompt, then turns of
384 tokens on the state kept at the previous prompt's end), on a random-weight shape, paged engine.
After the warm-up turns, one reused turn and one fresh prefill of the same whole prompt run under
``torch.profiler`` as 1-token calls (``max_tokens=1``: the profile is the prefill's, not 64 decode
steps'): the GPU kernel time and count, the host runtime calls, the top kernels and the top host
ops by their own CPU time. Every turn prints its phases in ms from the request's start, in order:
the reuse path's own (``matched``: the prefix tree found the kept state; ``released``: kept states
pushed out to make room were released on the device; ``forked``: the twin of the kept state made)
and the engine step's (``scheduled`` / ``launched`` / ``read``), then ``delivered`` (the first
token in the caller's queue) and ``kept`` (the prompt-end state kept for the next turn, after the
first token). Writes ``profile-reuse-turn-<shape>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profile_gpu_call import _profiled_block  # noqa: E402  (bench/ is on sys.path as the script's folder)


def _turn(backend, loaded, prompt: list[int], seed: int, new: int = 64) -> tuple[object, list[int], float]:
    from budgetllm.benchmarks.engine_bench import make_request

    req = make_request(loaded, len(prompt), new, 8, seed=seed, prompt=list(prompt), window=backend.window)
    t0 = time.perf_counter()
    answer = [s.token_id for s in backend.run(req) if s.finished is None]
    return req, answer, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-1.5b")
    ap.add_argument("--first", type=int, default=5504)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    from budgetllm.benchmarks.agent_loop import MARKUP, _ids
    from budgetllm.benchmarks.agent_report import _backend
    from budgetllm.models.testing import random_model

    loaded = random_model(args.shape)
    g = torch.Generator().manual_seed(1)
    vocab = loaded.config.vocab_size
    report = {"card": torch.cuda.get_device_name(0), "shape": args.shape, "turns": []}
    for prefix in (True, False):
        backend = _backend(loaded, 4, prefix, max_context=34 * 1024)
        prompt = _ids(g, args.first, vocab)
        for i in range(args.turns):
            req, answer, secs = _turn(backend, loaded, prompt, i)
            row = {"reuse": prefix, "turn": i + 1, "prompt": len(prompt), "cached": req.cached_tokens,
                   "ttft_ms": 1000 * req.prefill_seconds, "seconds": secs, "phases": dict(req.phases)}
            report["turns"].append(row)
            _print_phases(row)
            prompt = prompt + answer[:-2] + MARKUP + _ids(g, 384 - len(answer), vocab)
        key = "profile_reuse" if prefix else "profile_fresh"
        got = {}

        def one(b=backend, p=prompt, got=got):
            got["req"] = _turn(b, loaded, p, 99, new=1)[0]
            return got["req"].prefill_seconds

        report[key] = _profiled_block(one)
        report[key]["phases_ms"] = {k: round(1000 * v, 3) for k, v in got["req"].phases.items()}
        report[key]["cached"] = got["req"].cached_tokens
        print(f"profiled 1-token call ({'reuse' if prefix else 'fresh'}): {report[key]['phases_ms']}", file=sys.stderr)
        report[key]["pool"] = {k: v for k, v in backend.pool_stats().items() if isinstance(v, (int, float))}
        backend.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9.]+", "-", args.shape.lower()).strip("-")
    text = json.dumps(report, indent=1)
    (out / f"profile-reuse-turn-{slug}.json").write_text(text)
    print(text)


def _print_phases(row: dict) -> None:
    ph = sorted(row["phases"].items(), key=lambda kv: kv[1])
    print(f"{'reuse' if row['reuse'] else 'fresh'} turn {row['turn']} prompt {row['prompt']} cached {row['cached']} "
          f"ttft {row['ttft_ms']:.2f} ms | " + " ".join(f"{k} {1000 * v:.2f}" for k, v in ph), file=sys.stderr)


if __name__ == "__main__":
    main()
