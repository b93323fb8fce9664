"""Run the benchmark matrix of TARGETS.md on the GPU and write bench.json, summary.json and plots.

    python bench/run.py --out bench/results [--budget-s 480] [--quick] [--only grid|rest]
    python bench/run.py --out bench/results --merge a.json b.json   # parts of one session -> one report

A whole matrix takes longer than one 10-minute run of the lent GPU machine, so it runs in two
parts (``--only grid``, ``--only rest``) on the same machine; each part measures its own baselines
side by side (the HF static-cache pairs are re-measured next to the paged engine in "rest").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from budgetllm.benchmarks.matrix import main  # noqa: E402
from budgetllm.benchmarks.report import write_report  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["grid", "rest", "equal"])
    ap.add_argument("--merge", nargs="+")
    a = ap.parse_args()
    if a.merge:
        parts = [json.loads(Path(p).read_text()) for p in a.merge]
        results = dict(parts[0])
        for part in parts[1:]:
            assert part["card"] == results["card"], "parts measured on different cards"
            for k, v in part.items():
                if isinstance(v, list):
                    results[k] = results.get(k, []) + v
                elif k not in results:
                    results[k] = v
        Path(a.out, "bench.json").write_text(json.dumps(results, indent=1))
    else:
        results = main(a.out, a.budget_s, a.quick, a.only)
    summary = write_report(results, a.out)
    for t in summary["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (goal {t['goal']})")
    print(json.dumps({"card": summary["card"]}))
