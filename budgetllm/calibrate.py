"""`budgetllm calibrate`: measure accuracy, reasoning tokens and KV memory over a grid, for the Pareto policy."""

from __future__ import annotations

import argparse
from pathlib import Path

from budgetllm import tasks as task_lib
from budgetllm.policy.calibration import CalibrationGrid, CalibrationPoint, CalibrationTable, build_table


def measure_point(llm, task: str, budget: int, compression: float, width: int, samples: int,
                  answer_tokens: int = 24, seed: int = 0, concurrency: int = 1) -> CalibrationPoint:
    """Run ``samples`` items of ``task`` at one grid point; width > 1 samples and takes a majority vote.

    ``concurrency`` > 1 sends the calls from threads, so a batching backend (paged) runs them together.
    """
    from concurrent.futures import ThreadPoolExecutor

    items = list(task_lib.items(task, samples, seed))
    jobs = [(i, j, item) for i, item in enumerate(items) for j in range(width)]

    def run(job):
        i, j, item = job
        return i, llm.generate(item.prompt, thinking_budget=budget or None, compression=compression,
                               max_tokens=budget + answer_tokens, answer_reserve=answer_tokens,
                               temperature=0.7 if width > 1 else 0.0, seed=seed * 1000 + i * 10 + j)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        outs = list(pool.map(run, jobs))
    correct, reasoning, peaks, reads, prompt = 0, 0.0, 0, 0, 0
    answers: dict[int, list] = {i: [] for i in range(len(items))}
    for i, out in outs:
        answers[i].append(task_lib.extract_answer(out.text))
        reasoning += out.usage.reasoning_tokens / width
        peaks = max(peaks, out.usage.kv.peak_live_bytes * width)
        reads += out.usage.kv.kv_bytes_read
        prompt += out.usage.input_tokens / width
    for i, item in enumerate(items):
        correct += task_lib.majority(answers[i]) == item.answer
    return CalibrationPoint(task=task, thinking_budget=budget, compression=compression, accuracy=correct / samples,
                            mean_reasoning_tokens=reasoning / samples, peak_kv_bytes=int(peaks),
                            kv_bytes_read=int(reads / samples), n_samples=samples, width=width,
                            prompt_tokens=prompt / samples)


def calibrate(llm, grid: CalibrationGrid, samples: int, progress: bool = True, concurrency: int = 1) -> CalibrationTable:
    from tqdm import tqdm

    bar = tqdm(total=len(list(grid)), desc="calibrating", disable=not progress)

    def measure(task, budget, compression, width):
        point = measure_point(llm, task, budget, compression, width, samples, concurrency=concurrency)
        bar.set_postfix(task=task, budget=budget, cr=compression, acc=f"{point.accuracy:.2f}")
        bar.update(1)
        return point

    table = build_table(grid, measure, model=llm.model_name)
    table.meta.update({"samples": samples, "backend": llm.backend.name, "kv_mode": llm.profile.supports_compression})
    bar.close()
    return table


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def calibrate_command(args: argparse.Namespace) -> int:
    from budgetllm import LLM
    from budgetllm.policy.frontier_plot import plot_frontier

    llm = LLM.from_pretrained(args.model, device=args.device, backend=args.backend)
    grid = CalibrationGrid(tasks=tuple(args.tasks.split(",")), thinking_budgets=_ints(args.budgets),
                           compressions=_floats(args.compressions), widths=_ints(args.widths))
    table = calibrate(llm, grid, args.samples, concurrency=args.concurrency)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.save(out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot_frontier(table, plot)
    print(f"wrote {out} ({len(table.points)} points) and {plot}")
    return 0


def add_calibrate_subcommand(sub) -> None:
    p = sub.add_parser("calibrate", help="measure accuracy vs KV memory over budgets x compressions")
    p.add_argument("--model", default=None)
    p.add_argument("--tasks", default="arith,vartrack,kv,copy", help="built-in tasks or JSONL files, comma-separated")
    p.add_argument("--budgets", default="0,32,96", help="thinking budgets, comma-separated")
    p.add_argument("--compressions", default="1,2,4,8")
    p.add_argument("--widths", default="1")
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--concurrency", type=int, default=1, help="calls in flight (the paged backend batches them)")
    p.add_argument("--out", default="calibration.json")
    p.add_argument("--plot", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None)
    p.set_defaults(func=calibrate_command)
