"""Run the benchmark matrix of TARGETS.md on the GPU and write bench.json, summary.json and plots.

    python bench/run.py --out bench/results [--budget-s 480] [--quick]
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
    a = ap.parse_args()
    results = main(a.out, a.budget_s, a.quick)
    summary = write_report(results, a.out)
    for t in summary["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (goal {t['goal']})")
    print(json.dumps({"card": summary["card"]}))
