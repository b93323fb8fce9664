"""`budgetllm bench`: run the docs/targets.md matrix on this machine's GPU (or merge parts of one run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def bench_command(args: argparse.Namespace) -> int:
    from budgetllm.benchmarks.report import merge_parts, write_report

    if args.merge:
        results = merge_parts([json.loads(Path(p).read_text()) for p in args.merge])
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench.json").write_text(json.dumps(results, indent=1))
    else:
        import torch

        if not torch.cuda.is_available():
            print("budgetllm bench measures the paged GPU engine and needs a CUDA GPU; none was found")
            return 2
        if args.only == "constrained":  # constrained decoding: tok/s constrained vs none, compile time
            from budgetllm.benchmarks.constrained import main as constrained

            constrained(["--out", str(Path(args.out, "constrained.json"))])
            return 0
        if args.only == "agent":  # the agent loop: its own results file and summary lines
            from budgetllm.benchmarks.agent_report import main as agent_main

            for t in agent_main(args.out, args.quick)["targets"]:
                print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (goal {t['goal']})")
            return 0
        from budgetllm.benchmarks.matrix import main

        results = main(args.out, args.budget_s, args.quick, args.only)
    summary = write_report(results, args.out)
    for t in summary["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (goal {t['goal']})")
    print(json.dumps({"card": summary["card"]}))
    return 0


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench/results")
    p.add_argument("--budget-s", type=float, default=480, help="wall-time budget; later points are skipped")
    p.add_argument("--quick", action="store_true", help="contexts 1K, 8K and 32K, batch 1 and 16 only")
    p.add_argument("--only", choices=["grid", "rest", "equal", "long", "constrained", "agent"],
                   help="one part of the matrix (a whole matrix outlasts a 10-minute GPU lease); "
                        "agent: the agent loop, thinking bursts and call latency (agent_report.py)")
    p.add_argument("--merge", nargs="+", metavar="PART_JSON", help="merge parts into bench.json and report")


def add_bench_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the paged engine against its baselines (GPU)")
    add_bench_arguments(p)
    p.set_defaults(func=bench_command)
