"""Where a decode step's time goes: kernels per step (torch profiler on the eager step) and the
CUDA-graph replay time, for the Qwen2.5-1.5B shape (random weights, bf16). Needs CUDA.

    python bench/profile_decode.py --out bench/results/profile_decode.json [--points 1x1024,16x32768]

For each (batch x context) point and CR 1 / 8: kernel launches per step, GPU time per kernel family
(eager, so each kernel's own time without launch gaps), graph replay ms (CUDA events, 50 steps) and
the full engine step (replay + GPU sampling + the one readback) in ms.

``kernel_profile`` (used by ``bench/issue13.py``): per kernel of one batch-1 step, its time, the bytes
it must move (``step_kernel_bytes``: weights + KV + activations, from the shapes), its fraction of
the measured bandwidth, and the step's gap (graph replay minus the kernels' summed time; idle time
between kernels from their timestamps).
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


GEMMS = ("qkv", "o", "gate_up", "down")  # a layer's GEMMs in launch order; then the LM head
NAMED = {"decode_attention": "attention", "decode_reduce": "reduce", "store_decode_kv": "store",
         "qkv_rope": "rope", "qkv_store": "qkv_store"}


def shape_of(config) -> dict:
    """The numbers :func:`step_kernel_bytes` needs, from an HF config."""
    hq = config.num_attention_heads
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "inter": config.intermediate_size,
            "heads": hq, "kv_heads": config.num_key_value_heads, "vocab": config.vocab_size,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // hq,
            "qkv_bias": bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"}


def step_kernel_bytes(shape: dict, batch: int, kv_entries: list[int], num_splits: int = 1, e: int = 2) -> dict:
    """Bytes each kernel of a decode step must read + write, from the shapes (the one place):
    ``{label: [bytes per layer]}`` (``lm_head``: one entry). ``kv_entries[l]``: live KV entries of
    layer l summed over the batch's rows and KV heads (each entry is a K and a V vector of
    ``head_dim``); ``e``: bytes per weight / activation element; split-K partials are float32."""
    B, h, f, D = batch, shape["hidden"], shape["inter"], shape["head_dim"]
    hq, hk, L = shape["heads"], shape["kv_heads"], shape["layers"]
    nqkv = (hq + 2 * hk) * D
    part = B * hq * num_splits * (D + 2) * 4  # attention partials: [D] outputs + max + sum, float32
    one = {
        "qkv": (nqkv * h + h + (nqkv if shape["qkv_bias"] else 0)) * e + B * (h + nqkv) * e,
        "rope": 2 * B * (hq + hk) * D * e,
        "store": 2 * B * 2 * hk * D * e,
        "reduce": part + B * hq * D * e,
        "o": hq * D * h * e + B * (hq * D + 2 * h) * e,
        "gate_up": (2 * f * h + h) * e + B * (h + f) * e,
        "down": f * h * e + B * (f + 2 * h) * e,
    }
    out = {k: [v] * L for k, v in one.items()}
    out["attention"] = [n * 2 * D * e + B * hq * D * e + part for n in kv_entries]
    out["lm_head"] = [(shape["vocab"] * h + h) * e + B * h * e + B * shape["vocab"] * 4]
    return out


def label_kernels(names: list[str], layers: int) -> list[tuple[str, int | None]]:
    """(label, layer) of each kernel of one step, in launch order: the i-th GEMM is GEMMS[i % 4] of
    layer i // 4 and the one after the last layer the LM head; attention, reduce, store, RoPE by
    name (their own count = the layer); anything else (embedding, argmax, step start/end) "other"."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        low = n.lower()
        if any(t in low for t in ("gemv", "gemm", "nvjet", "cutlass", "xmma")):
            i = seen.get("gemm", 0)
            seen["gemm"] = i + 1
            out.append((GEMMS[i % 4], i // 4) if i < 4 * layers else ("lm_head", None) if i == 4 * layers
                       else ("other", None))
            continue
        lab = next((v for k, v in NAMED.items() if k in low), "other")
        i = seen.get(lab, 0)
        seen[lab] = i + 1
        out.append((lab, i if lab != "other" else None))
    return out


def kernel_rows(events: list[tuple[str, float, float]], shape: dict, kbytes: dict, bw: float, replay_us: float) -> dict:
    """One step's kernels ``(name, start_us, end_us)`` -> per-kernel rows (µs, bytes, fraction of
    ``bw``), per-label totals and the step's gaps: ``gap_us`` = graph replay minus the summed kernel
    times; ``idle_between_us`` = the step's span minus the time some kernel ran (from timestamps;
    PDL kernels overlap their predecessor's tail, so the sum can exceed the span)."""
    events = sorted(events, key=lambda ev: ev[1])
    labels = label_kernels([n for n, _, _ in events], shape["layers"])
    rows, per = [], {}
    for (name, t0, t1), (lab, layer) in zip(events, labels, strict=True):
        us = t1 - t0
        nb = kbytes[lab][layer or 0] if lab in kbytes and (layer or 0) < len(kbytes[lab]) else None
        rows.append({"name": name[:60], "label": lab, "layer": layer, "us": round(us, 2), "bytes": nb,
                     "bw_fraction": round(nb / (us * 1e-6) / bw, 3) if nb and us > 0 else None})
        a = per.setdefault(lab, {"kernels": 0, "us": 0.0, "bytes": 0})
        a["kernels"] += 1
        a["us"] += us
        a["bytes"] += nb or 0
    for a in per.values():
        a["bw_fraction"] = round(a["bytes"] / (a["us"] * 1e-6) / bw, 3) if a["bytes"] and a["us"] > 0 else None
        a["us"] = round(a["us"], 1)
    busy, end = 0.0, None
    for _, t0, t1 in events:  # union of the kernels' intervals
        if end is None or t0 >= end:
            busy += t1 - t0
            end = t1
        elif t1 > end:
            busy += t1 - end
            end = t1
    span = events[-1][2] - events[0][1] if events else 0.0
    total = sum(r["us"] for r in rows)
    step_bytes = sum(sum(v) for v in kbytes.values())
    return {"kernels": rows, "per_label": per, "kernel_count": len(rows), "kernel_sum_us": round(total, 1),
            "span_us": round(span, 1), "idle_between_us": round(span - busy, 1), "replay_us": round(replay_us, 1),
            "gap_us": round(replay_us - total, 1), "step_bytes": step_bytes,
            "replay_bw_fraction": round(step_bytes / (replay_us * 1e-6) / bw, 3) if replay_us else None}


@torch.inference_mode()
def kernel_profile(runner: ModelRunner, rows, bw: float, shape: dict, steps: int = 3,
                   modes=("eager", "graph")) -> dict:
    """Per-kernel bandwidth of the batch-``len(rows)`` step (``shape``: :func:`shape_of`), profiled
    per mode: the eager step and the graph replay (what the engine runs; CUPTI reports the kernels
    inside a graph); each the median of ``steps`` steps by summed kernel time."""
    from torch.profiler import ProfilerActivity, profile

    bs = len(rows)
    ns = runner.num_splits(bs)
    kv = runner.kv
    entries = [int(kv.row_lens[li, :bs].sum()) for li in range(runner.model.num_layers)]
    kbytes = step_kernel_bytes(shape, bs, entries, num_splits=ns)
    replay_us = 1000 * replay_ms(runner, rows, steps=30)
    out = {}
    for mode in modes:
        runner.decode(rows) if mode == "graph" else runner.decode_body(bs, ns)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                runner.decode(rows) if mode == "graph" else runner.decode_body(bs, ns)
            torch.cuda.synchronize()
        evs = sorted(((ev.name, ev.time_range.start, ev.time_range.end) for ev in prof.events()
                      if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0
                      and "memcpy" not in ev.name.lower() and "memset" not in ev.name.lower()),
                     key=lambda x: x[1])
        n = len(evs) // steps
        if n == 0:
            out[mode] = {"kernel_count": 0, "note": "the profiler saw no kernels"}
            continue
        per_step = [kernel_rows(evs[i * n:(i + 1) * n], shape, kbytes, bw, replay_us) for i in range(steps)]
        pick = sorted(per_step, key=lambda r: r["kernel_sum_us"])[len(per_step) // 2]
        pick["steps_kernel_sum_us"] = [r["kernel_sum_us"] for r in per_step]
        pick["kernels_seen"] = len(evs)  # not a multiple of ``steps``: the per-step split is approximate
        out[mode] = pick
    return out


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
