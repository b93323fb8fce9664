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


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
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
            return __orig(self, *a, **k)

        cls.run = run
    return launches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from budgetllm.benchmarks.engine_bench import make_request
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.paged_backend import PagedBackend
    from budgetllm.models.testing import random_model

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    launches = count_triton()
    loaded = random_model("qwen2.5-1.5b", device=dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32) \
        if args.layers <= 0 else _small(dev, args.layers)
    backend = PagedBackend(loaded, max_seqs=4, page_size=16, num_pages=4000, cuda_graphs=dev == "cuda",
                           max_context=4096, max_prefill_tokens=4096, window=256)
    report = {"device": dev, "layers": loaded.config.num_hidden_layers, "prompt": args.prompt, "calls": {}}
    for name, rule in (("forced (benchmarks)", None), ("threshold (trained DMS)", "thr")):
        for call, (length, new) in {"fresh": (args.prompt, 1), "one_token": (16, 1), "resumed": (None, 1)}.items():
            if call == "resumed":
                base = make_request(loaded, args.prompt, 4, 8, seed=7, window=256,
                                    rule=EvictionRule("dms", window=256, threshold=0.0) if rule else None)
                ans = [s.token_id for s in backend.run(base) if s.finished is None]
                prompt = base.prompt_ids + ans + list(range(3000, 3064))
                req = make_request(loaded, len(prompt), new, 8, seed=0, prompt=prompt, window=256,
                                   rule=base.rule)
            else:
                req = make_request(loaded, length, new, 8, seed=11, window=256,
                                   rule=EvictionRule("dms", window=256, threshold=0.0) if rule else None)
            launches.clear()
            with Counter() as c:
                for _ in backend.run(req):
                    pass
            report["calls"][f"{name}: {call}"] = {
                "prompt_tokens": len(req.prompt_ids), "cached_tokens": req.cached_tokens,
                "triton_launches": sum(launches.values()), "torch_ops": sum(c.ops.values()),
                "top_torch_ops": dict(c.ops.most_common(8)), "triton": dict(launches)}
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
