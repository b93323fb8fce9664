"""Run the benchmark matrix of docs/targets.md on the GPU and write bench.json, summary.json and plots.

    python bench/run.py --out bench/results [--budget-s 480] [--quick] [--only grid|rest|equal]
    python bench/run.py --out bench/results --merge a.json b.json   # parts of one session -> one report

Same as ``budgetllm bench``. A whole matrix takes longer than one 10-minute run of the lent GPU
machine, so it runs in parts (``--only grid``, ``rest``, ``equal``) on the same kind of card; each
part measures its own baselines side by side with the engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from budgetllm.benchmarks.cli import add_bench_arguments, bench_command  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    add_bench_arguments(ap)
    sys.exit(bench_command(ap.parse_args()))
