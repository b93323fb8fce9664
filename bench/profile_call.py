"""Per-call fixed costs of the paged engine, counted (not timed) so that it runs anywhere, CPU included.

    python bench/profile_call.py [--layers 4] [--prompt 1024] [--out bench/results/profile_call.json]

A random model of the SmolLM2-135M shape with ``--layers`` layers (CPU: the Triton kernels run in
the interpreter, so times mean nothing there; the counts are what the GPU engine launches too). For
a fresh ``--prompt``-token call, a 1-token call, and a resumed turn (the fresh call's prompt + 64
tokens, served from the kept state), it counts per engine phase: Triton kernel launches, torch ops
(aten calls, each one launch on the GPU) and the host syncs of the prefix tree (fork / release),
with the eviction rule of a trained model (threshold rows: compaction per layer) and the forced
rule of the benchmarks (decisions shared by every layer: compaction once per call).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

INSIDE = [0]  # > 0 while a Triton launch runs (the CPU interpreter's own tensor ops are not counted)


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not INSIDE[0]:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count_triton() -> collections.Counter:
    """Patch the Triton launcher (JIT or interpreter) to count launches by kernel name."""
    launches: collections.Counter = collections.Counter()
    from triton.runtime import interpreter, jit

    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        orig = cls.run

        def run(self, *a, __orig=orig, **k):
            launches[getattr(self, "__name__", None) or getattr(getattr(self, "fn", None), "__name__", "?")] += 1
            INSIDE[0] += 1
            try:
                return __orig(self, *a, **k)
            finally:
                INSIDE[0] -= 1

        cls.run = run
    return launches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.engine.rules import FORCED, THRESHOLD, RowRule
    from budgetllm.models.testing import random_model

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    launches = count_triton()
    loaded = random_model("qwen2.5-1.5b", device=dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32) \
        if args.layers <= 0 else _small(dev, args.layers)
    backend = PagedBackend(loaded, max_seqs=4, page_size=16, num_pages=4000, cuda_graphs=dev == "cuda",
                           max_context=4096, max_prefill_tokens=4096, window=256)
    runner = backend.runner  # driven directly on this thread (the dispatch counter is thread-local)
    report = {"device": dev, "layers": loaded.config.num_hidden_layers, "prompt": args.prompt, "calls": {}}
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(100, 30000, (args.prompt + 64,), generator=g).tolist()

    def measure(name, fn):
        launches.clear()
        with Counter() as c:
            fn()
        report["calls"][name] = {"triton_launches": sum(launches.values()), "torch_ops": sum(c.ops.values()),
                                 "top_torch_ops": dict(c.ops.most_common(6)), "triton": dict(launches)}

    for name, rule in (("forced (benchmarks)", RowRule(FORCED, period=8)), ("threshold (trained DMS)",
                                                                             RowRule(THRESHOLD, thr=0.0))):
        for call, n in (("fresh prefill", args.prompt), ("one-token prompt", 16)):
            measure(f"{name}: {call} ({n} tokens)", lambda n=n, rule=rule: runner.prefill(
                [(0, toks[:n], 0, rule)], [True], free_pages=backend.bm.free_pages))
            runner.release([0])
        runner.prefill([(0, toks[:args.prompt], 0, rule)], [True])
        measure(f"{name}: keep the prompt state (fork)", lambda: runner.fork(0, 1, args.prompt))
        measure(f"{name}: resumed turn, 64 new tokens", lambda rule=rule: runner.prefill(
            [(0, toks[args.prompt:], args.prompt, rule)], [True], free_pages=backend.bm.free_pages))
        measure(f"{name}: release two slots sharing pages", lambda: runner.release([0, 1]))
    backend.close()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def _small(dev: str, layers: int):
    """The SmolLM2-135M shape (hidden 576, 9 query / 3 KV heads, head dim 64) with fewer layers and
    borrowed-channel DMS decisions (threshold rows run the per-layer decision path)."""
    import budgetllm.models.testing as t
    from budgetllm.models.testing import random_model

    t.REAL_SHAPES.setdefault("smollm2-small", dict(arch="llama", hidden_size=576, intermediate_size=1536,
                                                   num_hidden_layers=layers, num_attention_heads=9,
                                                   num_key_value_heads=3, vocab_size=49152,
                                                   tie_word_embeddings=True, max_position_embeddings=8192))
    return random_model("smollm2-small", device=dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32,
                        dms="borrowed")


if __name__ == "__main__":
    main()
