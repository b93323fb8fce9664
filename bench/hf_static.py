"""HF generate with its static cache and compiled decode step vs the paged engine, side by side.

    python bench/hf_static.py --out bench/results/hf-static-h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from budgetllm.benchmarks.baselines import hf_generate_decode_rate  # noqa: E402
from budgetllm.benchmarks.engine_bench import run_batch  # noqa: E402
from budgetllm.benchmarks.matrix import paged_backend  # noqa: E402
from budgetllm.models.testing import random_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    loaded = random_model("qwen2.5-1.5b")
    pairs = []
    for ctx, batch in ((1024, 1), (8192, 16)):
        backend = paged_backend(loaded, max_seqs=batch + 2)
        paged = run_batch(backend, loaded, batch, ctx, 48, 8)
        backend.close()
        backend = None
        torch.cuda.empty_cache()
        static = hf_generate_decode_rate(loaded.hf_model, batch, ctx, new_tokens=16, static=True)
        pairs.append({"shape": "qwen2.5-1.5b", "context": ctx, "batch": batch, "paged_cr8_tok_s": paged.decode_tok_s,
                      "hf_static_tok_s": static["tok_s"], "ratio": paged.decode_tok_s / static["tok_s"]})
        print(pairs[-1], flush=True)
    Path(a.out).write_text(json.dumps({"card": torch.cuda.get_device_name(0), "pairs": pairs}, indent=1))


if __name__ == "__main__":
    main()
