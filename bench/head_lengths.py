"""Per-(layer, KV head) kept fractions of a DMS row under the embedded SmolLM2-135M's trained adapter
(its native rule: logit > 0) on real text: the uneven pattern the decode-attention benchmark scales
to other shapes (bench/decode_floor.py). CPU, ~1-2 minutes.

    python bench/head_lengths.py --tokens 2048 --out bench/results/smollm2_head_kept.json

A row at position T keeps every unflagged token plus the last ``window`` tokens; flag(k) = decision
of token k + 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--out", default="bench/results/smollm2_head_kept.json")
    a = ap.parse_args()
    from budgetllm.dms.data import make_tasks, task_text_ids
    from budgetllm.engine.reference.backend import ReferenceBackend
    from budgetllm.models import load_model

    loaded = load_model(None, device="cpu", dtype=torch.float32, progress=False)
    text = [t for ids in task_text_ids(loaded.tokenizer, make_tasks(64, seed=3)) for t in ids][: a.tokens]
    with torch.inference_mode():
        logits = ReferenceBackend(loaded).prompt_logits(text)  # per layer [T, H]
    w = loaded.dms.window
    T = len(text)
    kept = []
    for lg in logits:
        lg = lg.reshape(T, -1).float()
        flag = torch.zeros_like(lg, dtype=torch.bool)
        flag[:-1] = lg[1:] > 0  # flag of token k = decision of token k + 1
        far = max(0, T - w)
        kept.append(((~flag[:far]).sum(0) + (T - far)).div(T).tolist())
    flat = [x for row in kept for x in row]
    out = {"model": "SmolLM2-135M-Instruct + trained DMS adapter (embedded)", "rule": "logit > 0", "window": w,
           "tokens": T, "kept_fraction": kept, "mean": sum(flat) / len(flat), "min": min(flat), "max": max(flat)}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "kept_fraction"}))


if __name__ == "__main__":
    main()
