"""HF generate with its static cache and compiled decode step vs the paged engine, side by side.

    python bench/hf_static.py --out bench/results/hf-static-h100.json

(``bench/run.py --only rest`` measures the same pairs as part of the matrix.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from budgetllm.benchmarks.matrix import Clock, hf_static_pairs  # noqa: E402
from budgetllm.models.testing import random_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    pairs = hf_static_pairs(random_model("qwen2.5-1.5b"), "qwen2.5-1.5b", Clock(3600))
    for p in pairs:
        print(p, flush=True)
    Path(a.out).write_text(json.dumps({"card": torch.cuda.get_device_name(0), "pairs": pairs}, indent=1))


if __name__ == "__main__":
    main()
