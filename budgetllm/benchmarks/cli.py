"""`budgetllm bench`: run the TARGETS.md matrix on this machine's GPU."""

from __future__ import annotations

import argparse


def bench_command(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("budgetllm bench measures the paged GPU engine and needs a CUDA GPU; none was found")
        return 2
    from budgetllm.benchmarks.matrix import main
    from budgetllm.benchmarks.report import write_report

    results = main(args.out, args.budget_s, args.quick)
    summary = write_report(results, args.out)
    for t in summary["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (goal {t['goal']})")
    return 0


def add_bench_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the paged engine against its baselines (GPU)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--budget-s", type=float, default=480, help="wall-time budget; later points are skipped")
    p.add_argument("--quick", action="store_true", help="contexts 1K and 8K only")
    p.set_defaults(func=bench_command)
