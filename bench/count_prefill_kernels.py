"""Kernels per layer of the prefill body (``ModelRunner.prefill_body``), counted op by op.

    python bench/count_prefill_kernels.py                 # CPU: tiny adapter model, Triton interpreter
    python bench/count_prefill_kernels.py --device cuda   # GPU: the same count on the device

Every aten op that launches work (views and allocations excluded) and every Triton launch counts one
kernel; each is attributed to the piece of the layer it runs in (``attention_inputs``, ``attention``,
``store``, ...). One chunk of a threshold rule (the decisions differ per layer: the case the prefill
graphs always run) goes through the prefill graph's padded body (a real chunk + the scratch chunk).
Prints a JSON object: kernels per layer by piece, per call outside the layers, and the op names.
The same counter backs ``tests/engine/paged/test_prefill_kernel_count.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=40)
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import tempfile

    from budgetllm import LLM
    from budgetllm.engine.paged.kernel_count import count_prefill_kernels
    from budgetllm.models.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny", "qwen2", dms="adapter")
    loaded = LLM.from_pretrained(str(path), backend="reference", device=args.device, progress=False).loaded
    print(json.dumps(count_prefill_kernels(loaded, args.tokens), indent=1))


if __name__ == "__main__":
    main()
