"""Where a short call's time goes on the GPU: wall time per phase against the GPU's own busy time.

    python bench/profile_gpu_call.py [--out bench/results]        # ~1 minute on an H200

For the embedded SmolLM2-135M (real weights; the random SmolLM2 shape when the package is missing)
on the paged engine, one request at a time, it measures

* the time to first token of a fresh 1K-token prompt and the wall time of a 1-token call (16-token
  prompt), median of 7, with the engine's phases (scheduled / launched / read, from the request's
  start), with the prefill graphs (a 1,024-token chunk runs in the 1,088 bucket) and without
  (``eager``: the graphs are captured but not used);
* one call of each under ``torch.profiler``: the GPU kernel time (the sum of the kernels' own
  time) and the number of kernels and of host-side launches (CUDA runtime calls), so that
  ``wall - gpu`` is the host overhead the target "a 1-token call's overhead beyond its forward
  passes <= 2 ms" speaks of.

Writes ``profile-gpu-call-<card>.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _model():
    from budgetllm.models import load_model

    try:
        return "smollm2-135m", load_model(None, device="cuda", dtype=torch.bfloat16, progress=False)
    except Exception as e:  # noqa: BLE001 - the embedded package is optional here
        print(f"embedded SmolLM2 not available ({e!r}): the random SmolLM2 shape", file=sys.stderr)
        import budgetllm.models.testing as t

        t.REAL_SHAPES.setdefault("smollm2-135m-shape", dict(
            arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192))
        return "smollm2-135m shape (random)", t.random_model("smollm2-135m-shape", device="cuda",
                                                            dtype=torch.bfloat16)


def _call(backend, loaded, n: int, new: int, seed: int):
    from budgetllm.benchmarks.engine_bench import make_request

    req = make_request(loaded, n, new, 1, seed=seed, window=backend.window)
    t0 = time.perf_counter()
    for _ in backend.run(req):
        pass
    return req.prefill_seconds, time.perf_counter() - t0, dict(req.phases)


def _profiled(backend, loaded, n: int, new: int, seed: int) -> dict:
    return _profiled_block(lambda: _call(backend, loaded, n, new, seed)[:2])


def _profiled_block(fn) -> dict:
    """Run ``fn`` (returns ttft seconds, or (ttft, wall)) once under ``torch.profiler``: GPU kernel
    time and count, host runtime calls, the top kernels and the top host ops by their own CPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        got = fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ttft = got[0] if isinstance(got, tuple) else got
    ev = prof.key_averages()
    dev = [e for e in ev if e.device_type == DeviceType.CUDA]
    host = [e for e in ev if e.device_type != DeviceType.CUDA]
    own = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    runtime = [e for e in ev if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch",
                                                  "cudaMemcpyAsync", "cudaStreamSynchronize"))]
    top = sorted(dev, key=own, reverse=True)[:8]
    top_host = sorted(host, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {"wall_ms_profiled": 1000 * wall, "ttft_ms_profiled": 1000 * ttft,
            "gpu_kernel_ms": sum(own(e) for e in dev) / 1000, "gpu_kernels": sum(e.count for e in dev),
            "host_runtime_calls": {e.key: e.count for e in runtime},
            "top_kernels_ms": {e.key[:60]: round(own(e) / 1000, 3) for e in top},
            "top_host_ops_ms": {e.key[:60]: [round(e.self_cpu_time_total / 1000, 3), e.count] for e in top_host}}


def measure(backend, loaded, repeats: int = 7) -> dict:
    for s in range(3):  # warm-up: kernels specialise on the first calls
        _call(backend, loaded, 1024, 1, 500 + s)
        _call(backend, loaded, 16, 1, 600 + s)
    k = [_call(backend, loaded, 1024, 1, 700 + s) for s in range(repeats)]
    o = [_call(backend, loaded, 16, 1, 800 + s) for s in range(repeats)]
    return {"ttft_1k_ms": 1000 * statistics.median(x[0] for x in k),
            "one_token_call_ms": 1000 * statistics.median(x[1] for x in o),
            "ttft_1k_phases_s": k[len(k) // 2][2], "one_token_phases_s": o[len(o) // 2][2],
            "profile_1k": _profiled(backend, loaded, 1024, 1, 900),
            "profile_one_token": _profiled(backend, loaded, 16, 1, 901)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    from budgetllm.engine.paged.backend import PagedBackend

    card = torch.cuda.get_device_name(0)
    name, loaded = _model()
    report = {"card": card, "model": name, "runs": {}}
    backend = PagedBackend(loaded, max_seqs=4, max_context=8192, max_prefill_tokens=16384, memory_fraction=0.5,
                           window=256)
    st = backend.pool_stats()
    report["prefill_graphs"], report["prefill_graph_error"] = st["prefill_graphs"], st["prefill_graph_error"]
    report["buckets"] = list(backend.runner.prefill_graphs.buckets) if backend.runner.prefill_graphs else []
    pg0 = backend.runner.prefill_graphs  # start-up cost of the buckets, and kernels per layer in the graphs
    report["prefill_graph_capture_s"] = round(pg0.capture_s, 3) if pg0 else None
    report["num_layers"] = backend.runner.model.num_layers
    report["runs"]["graphed"] = measure(backend, loaded)
    graphs, backend.runner.prefill_graphs = backend.runner.prefill_graphs, None  # the eager prefill
    report["runs"]["eager"] = measure(backend, loaded)
    backend.runner.prefill_graphs = graphs
    backend.close()
    for run in report["runs"].values():  # the host overhead of a 1-token call beyond its GPU work
        p = run["profile_one_token"]
        run["one_token_overhead_ms"] = run["one_token_call_ms"] - p["gpu_kernel_ms"]  # unprofiled wall - GPU work
        for key in ("profile_1k", "profile_one_token"):  # kernels per layer (~13 in the graph + the call's ~30)
            run[key]["gpu_kernels_per_layer"] = round(run[key]["gpu_kernels"] / report["num_layers"], 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    text = json.dumps(report, indent=1)
    (out / f"profile-gpu-call-{slug}.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
