"""Where a decode step's time goes: kernels per step (torch profiler on the eager step) and the
CUDA-graph replay time, for the Qwen2.5-1.5B shape (random weights, bf16). Needs CUDA.

    python bench/profile_decode.py --out bench/results/profile_decode.json [--points 1x1024,16x32768]

For each (batch x context) point and CR 1 / 8: kernel launches per step, GPU time per kernel family
(eager, so each kernel's own time without launch gaps), graph replay ms (CUDA events, 50 steps) and
the full engine step (replay + GPU sampling + the one readback) in ms.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from budgetllm.engine.paged.model_runner import ModelRunner, RunnerConfig  # noqa: E402
from budgetllm.engine.rules import DENSE, FORCED, RowRule  # noqa: E402
from budgetllm.models.testing import random_model  # noqa: E402


def fill(runner: ModelRunner, batch: int, context: int, rule: RowRule, chunk: int = 8192) -> None:
    g = torch.Generator().manual_seed(0)
    for s in range(batch):
        toks = torch.randint(100, 30000, (context,), generator=g).tolist()
        for p0 in range(0, context, chunk):
            runner.prefill([(s, toks[p0:p0 + chunk], p0, rule)], [False])
    torch.cuda.synchronize()


def kernel_table(runner: ModelRunner, bs: int, steps: int = 3) -> tuple[int, dict[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    ns = runner.num_splits(bs)
    runner.decode_body(bs, ns)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            runner.decode_body(bs, ns)
        torch.cuda.synchronize()
    fam: dict[str, float] = collections.Counter()
    count = 0
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            count += 1
            fam[ev.name[:70]] += ev.device_time / steps / 1000.0  # ms per step
    return count // steps, dict(sorted(fam.items(), key=lambda kv: -kv[1]))


def replay_ms(runner: ModelRunner, rows, steps: int = 50, full: bool = False) -> float:
    from budgetllm.engine.paged.sampler import make_sampling_batch
    from budgetllm.types import SamplingParams

    greedy = make_sampling_batch([SamplingParams()] * len(rows), [None] * len(rows), runner.device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        runner.decode(rows)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        logits = runner.decode(rows)
        if full:
            runner.sample_and_read(logits, greedy)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def prefill_profile(loaded, context: int = 8192, chunk: int = 257) -> dict:
    """One chunked prefill of ``chunk`` tokens on top of a ``context``-token compressed row (a resumed
    turn): wall time, GPU kernel time, and where the host time goes (self CPU time by op)."""
    from torch.profiler import ProfilerActivity, profile

    rule = RowRule(FORCED, period=8)
    runner = ModelRunner(loaded, RunnerConfig(max_seqs=2, max_context=context + 4 * chunk, memory_fraction=0.3,
                                              window=256, cuda_graphs=False))
    fill(runner, 1, context, rule)
    toks = list(range(1000, 1000 + chunk))
    for i in range(2):  # warm-up (compiles the chunk-on-an-existing-row specialisations)
        runner.prefill([(0, toks, context + i * chunk, rule)], [True])
    torch.cuda.synchronize()
    p0 = context + 2 * chunk
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        runner.prefill([(0, toks, p0, rule)], [True])
        t_host = time.perf_counter() - t0
        torch.cuda.synchronize()
        t_all = time.perf_counter() - t0
    cpu: dict[str, float] = collections.Counter()
    gpu = 0.0
    n_gpu = 0
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            gpu += ev.device_time
            n_gpu += 1
        else:
            cpu[ev.name[:60]] += ev.self_cpu_time_total
    del runner
    gc.collect()
    torch.cuda.empty_cache()
    return {"context": context, "chunk": chunk, "host_ms": round(1000 * t_host, 2), "wall_ms": round(1000 * t_all, 2),
            "gpu_kernel_ms": round(gpu / 1000, 2), "gpu_kernels": n_gpu,
            "top_host_self_ms": {k: round(v / 1000, 3) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])[:25]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/profile_decode.json")
    ap.add_argument("--points", default="1x1024,16x8192,16x32768")
    a = ap.parse_args()
    loaded = random_model("qwen2.5-1.5b")
    out = {"card": torch.cuda.get_device_name(0), "points": []}
    out["resumed_prefill"] = prefill_profile(loaded)
    print(json.dumps(out["resumed_prefill"], indent=1), flush=True)
    for spec in a.points.split(","):
        batch, context = (int(x) for x in spec.split("x"))
        for cr in (1, 8):
            rule = RowRule(DENSE) if cr == 1 else RowRule(FORCED, period=cr)
            runner = ModelRunner(loaded, RunnerConfig(max_seqs=batch, max_context=context + 512, memory_fraction=0.5,
                                                      window=512))
            fill(runner, batch, context, rule)
            rows = [(s, 1000 + s, rule) for s in range(batch)]
            runner.fill_decode(rows, batch)
            live = int(runner.kv.row_lens[:, :batch].sum()) // (runner.model.num_layers * runner.model.H * batch)
            kernels, fams = kernel_table(runner, batch)
            point = {"batch": batch, "context": context, "compression": cr, "kernels_per_step": kernels, "live_entries_per_row": live,
                     "eager_kernel_ms": round(sum(fams.values()), 3),
                     "graph_replay_ms": round(replay_ms(runner, rows), 3),
                     "engine_step_ms": round(replay_ms(runner, rows, full=True), 3),
                     "top_kernels_ms": {k: round(v, 4) for k, v in list(fams.items())[:25]}}
            print(json.dumps(point, indent=1), flush=True)
            out["points"].append(point)
            del runner
            gc.collect()  # the graphs hold the runner: free its pool before the next one sizes itself
            torch.cuda.empty_cache()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
