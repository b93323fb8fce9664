"""The decode step against its bandwidth floor (issue: few kernels per layer, no bubbles, uneven heads).

One script for one GPU call, time-boxed (``--budget`` seconds; each part checks the clock):

1. ``ceiling``: device-to-device copy bandwidth (bytes read + written), the 1.0 of every fraction;
2. ``kernels``: each GEMM of a layer at batch 1 and 16, cuBLAS (``F.linear`` alone) vs the fused
   ``gemv`` (with its norm / residual / silu epilogue), CUDA-graph replays over weight copies that
   exceed the L2 three times, so every call streams its weights from HBM;
   ``sweep``: a wider, time-boxed plan sweep of the two GEMMs that lose to cuBLAS (bench/gemv_sweep.py),
   whose best plans the step part then uses;
3. ``steps``: the graph-replayed decode step and the engine step (replay + the one readback) of
   random-weight models (SmolLM2-135M and Qwen2.5-1.5B shapes, bf16) with the cuBLAS path and the
   small-batch path in 8, 6 and 5 launches per layer (``set_variant``), with programmatic dependent
   launch; logits of one step from the same state compared between the paths; kernels per step
   (eager, profiler);
4. ``attention``: the 28 decode-attention launches of a Qwen2.5-1.5B step at 32K, CR 8, uniform
   rows vs the uneven per-head pattern of SmolLM2's trained adapter on real text (scaled to the
   shape: bench/results/smollm2_head_kept.json), plain vs balanced splits.

    python bench/decode_floor.py --out bench/results/decode_floor-h200.json --budget 200
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.decode_floor_attention import T0, attention_part, graph_us, left  # noqa: E402
from bench.gemv_sweep import sweep_part  # noqa: E402
from bench.profile_decode import fill, kernel_table  # noqa: E402
from budgetllm.engine.paged.cuda_graphs import DecodeGraphs  # noqa: E402
from budgetllm.engine.paged.decode_layer import DecodeLayers  # noqa: E402
from budgetllm.engine.paged.model_runner import ModelRunner, RunnerConfig  # noqa: E402
from budgetllm.engine.rules import DENSE, FORCED, RowRule  # noqa: E402
from budgetllm.kernels.gemv import HAS_PDL, GemvWorkspace, gemv  # noqa: E402
from budgetllm.models.testing import REAL_SHAPES, random_model  # noqa: E402

REAL_SHAPES.setdefault("smollm2-135m", dict(
    arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
    tie_word_embeddings=True))


def ceiling() -> float:
    a = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)  # 512 MiB
    b = torch.empty_like(a)
    us = graph_us([lambda: b.copy_(a)], reps=10)
    return 2 * (1 << 28) * 2 / (us * 1e-6)


LAYER_MATS = {  # name -> (N, K, glu)
    "qwen2.5-1.5b": {"qkv": (2048, 1536, False), "o": (1536, 1536, False), "gate_up": (8960, 1536, True),
                     "down": (1536, 8960, False), "lm_head": (151936, 1536, False)},
    "smollm2-135m": {"qkv": (960, 576, False), "o": (576, 576, False), "gate_up": (1536, 576, True),
                     "down": (576, 1536, False), "lm_head": (49152, 576, False)},
}


FMA_CANDIDATES = [(16, 512, 8, 2), (8, 1024, 8, 1), (32, 256, 8, 2), (16, 512, 4, 3), (16, 256, 4, 2)]
DOT_CANDIDATES = [(16, 128, 4, 2), (32, 128, 4, 3), (64, 128, 8, 2)]


def _split(N: int, K: int, bn: int) -> int:
    target = 2 * torch.cuda.get_device_properties(0).multi_processor_count
    return max(1, min(triton.cdiv(target, triton.cdiv(N, bn)), K // 1024))


def kernels_part(bw: float, budget: float, out: list, best: dict, mats: str | None = None, rows=(1, 16)) -> None:
    """Per GEMM: cuBLAS, the default plan and candidate plans (M = 1: FMA path, M = 16: tl.dot path);
    ``best[(N, K, glu, M_PAD)]`` = the fastest plan (used by the step part)."""
    ws = GemvWorkspace("cuda")
    for shape, shape_mats in LAYER_MATS.items():
        for name, (N, K, glu) in shape_mats.items():
            if mats and name not in mats.split(","):
                continue
            rows_w = 2 * N if glu else N
            nbytes = rows_w * K * 2
            copies = max(1, math.ceil(3 * 60e6 / nbytes))  # 3x the L2
            ws_ = [torch.randn(rows_w, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
            for M in rows:
                if left(budget) < 0:
                    return
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                res = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
                nw = torch.rand(K, device="cuda", dtype=torch.bfloat16) + 0.5
                kw = {"norm": (nw, 1e-6), "glu": True} if glu else \
                    {"norm": (nw, 1e-6), "out_f32": True} if name == "lm_head" else \
                    {"norm": (nw, 1e-6)} if name == "qkv" else {"residual": res}
                cands = FMA_CANDIDATES if M <= 4 else DOT_CANDIDATES
                variants = {"cublas_linear": lambda w, x=x: F.linear(x, w),
                            "gemv_default": lambda w, x=x, kw=kw: gemv(x, w, ws=ws, **kw)}
                for bn, bk, warps, stages in cands:
                    plan = (bn, bk, _split(N, K, bn), warps, stages)
                    variants[f"gemv_{plan}"] = lambda w, x=x, kw=kw, plan=plan: gemv(x, w, ws=ws, plan=plan, **kw)
                    if glu:  # gate and up rows in separate programs
                        variants[f"pairs_{plan}"] = lambda w, x=x, kw=kw, plan=plan: gemv(
                            x, w, ws=ws, plan=plan, glu_pairs=True, **kw)
                times = {}
                for vname, fn in variants.items():
                    try:
                        times[vname] = graph_us([lambda w=w, fn=fn: fn(w) for w in ws_])
                    except Exception as e:  # noqa: BLE001 - e.g. out of resources for one plan
                        print(vname, repr(e)[:200], flush=True)
                gem = {k: v for k, v in times.items() if k.startswith("gemv_(")}
                bname = min(gem, key=gem.get)
                plan = tuple(int(t) for t in bname[6:-1].split(","))
                best[(N, K, glu, 1 if M == 1 else 16)] = plan
                times["gemv_best_pdl"] = graph_us([lambda w=w, x=x, kw=kw, plan=plan: gemv(x, w, ws=ws, plan=plan, pdl=True,
                                                                                    **kw) for w in ws_])
                pairs = {k: v for k, v in times.items() if k.startswith("pairs_(")}
                if pairs:
                    pname = min(pairs, key=pairs.get)
                    pplan = tuple(int(t) for t in pname[7:-1].split(","))
                    best[("pairs", N, K, 1 if M == 1 else 16)] = pplan
                    times["pairs_best_pdl"] = graph_us([lambda w=w, x=x, kw=kw, pplan=pplan: gemv(
                        x, w, ws=ws, plan=pplan, pdl=True, glu_pairs=True, **kw) for w in ws_])
                for vname, us in times.items():
                    out.append({"shape": shape, "mat": name, "M": M, "variant": vname, "us": round(us, 2),
                                "bytes": nbytes, "bw_fraction": round(nbytes / (us * 1e-6) / bw, 3)})
                print(json.dumps({"shape": shape, "mat": name, "M": M, "best": bname, "best_us": round(gem[bname], 2),
                                  **{k: round(v, 2) for k, v in times.items()}}), flush=True)
            del ws_
    torch.cuda.empty_cache()


def set_variant(runner: ModelRunner, variant: str, best: dict, capture: bool = True) -> None:
    """Variants: "cublas"; "l8_pdl" (gemv + qkv_rope + store + attention + reduce + 3 gemv per layer),
    "l6_pdl" (qkv_store: QKV, RoPE, decision and store in one launch), "l5_pdl" (and the attention's
    reduce inside the attention kernel), "_default": ``plan_for``'s plans even when a sweep ran;
    "engine": the path the runner chose itself (its ``RunnerConfig`` defaults, as the engine runs)."""
    if variant == "engine":
        runner.fast = runner.engine_fast
    else:
        _set_fast(runner, variant, best)
    if not capture:
        return
    runner.graphs = None
    gc.collect()
    runner.graphs = DecodeGraphs(runner, runner.buckets)
    runner.graphs.capture()


def _set_fast(runner: ModelRunner, variant: str, best: dict) -> None:
    plans = {} if "default" in variant else {k: v for k, v in best.items() if k[0] != "pairs"}
    if "default" not in variant:  # the gate/up plans swept with separate gate and up programs (the default)
        plans.update({(N, K, True, m): p for (tag, N, K, m), p in
                      ((k, v) for k, v in best.items() if k[0] == "pairs")})
    runner.fast = None if variant == "cublas" else DecodeLayers(
        runner.model, runner.device, pdl="pdl" in variant, plans=plans, max_rows=16 if "16" in variant else 4,
        fuse_qkv="l5" in variant or "l6" in variant, fuse_reduce="l5" in variant)


def timed_steps(runner: ModelRunner, rows, steps: int = 40, readback: bool = False) -> float:
    from budgetllm.engine.paged.sampler import make_sampling_batch
    from budgetllm.types import SamplingParams

    greedy = make_sampling_batch([SamplingParams()] * len(rows), [None] * len(rows), runner.device)
    for _ in range(3):
        runner.decode(rows)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t = time.perf_counter()
    s.record()
    for _ in range(steps):
        logits = runner.decode(rows)
        if readback:
            runner.sample_and_read(logits, greedy, decoded=True)
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / steps if not readback else 1000 * (time.perf_counter() - t) / steps


@torch.inference_mode()
def one_step_logits(runner: ModelRunner, bs: int) -> torch.Tensor:
    """Logits of one eager step from the current state, the state restored afterwards."""
    kv = runner.kv
    snap = {k: v.clone() for k, v in vars(kv).items() if isinstance(v, torch.Tensor)}
    runner.decode_body(bs, runner.num_splits(bs))
    out = runner.logits_buf[:bs].clone()
    for k, v in snap.items():
        getattr(kv, k).copy_(v)
    return out


STEP_POINTS = (("smollm2-135m", [(1, 1024, 1), (16, 1024, 1)]),
               ("qwen2.5-1.5b", [(1, 1024, 1), (1, 32768, 1), (1, 32768, 8), (16, 8192, 8)]))


def parse_points(spec: str):
    """'shape:BxCTXxCR,...' -> STEP_POINTS' form."""
    by_shape: dict = {}
    for item in spec.split(","):
        shape, p = item.split(":")
        by_shape.setdefault(shape, []).append(tuple(int(v) for v in p.split("x")))
    return tuple(by_shape.items())


def steps_part(bw: float, budget: float, out: list, best: dict, plan=STEP_POINTS, variants=None, load=None,
               on_point=None) -> None:
    """Without ``best`` (no kernel sweep in this run) the small-batch path uses ``gemv_plan``'s plans.
    ``variants``: the paths to time (default: cuBLAS and the fused layers; "engine": the runner's own
    choice); ``load(shape)``: the model (default random weights); ``on_point(runner, rows, point,
    loaded, variant)``: called after each variant's timings, its graphs still captured."""
    for shape, points in plan:
        loaded = (load or random_model)(shape)
        wbytes = sum(p.numel() * p.element_size() for p in loaded.hf_model.parameters())
        for batch, ctx, cr in points:
            if left(budget) < 20:
                return
            rule = RowRule(DENSE) if cr == 1 else RowRule(FORCED, period=cr)
            L = loaded.hf_model.config.num_hidden_layers
            H = loaded.hf_model.config.num_key_value_heads
            pages = batch * L * H * (math.ceil((ctx + 1024) / 16) + 2) + 4096
            runner = ModelRunner(loaded, RunnerConfig(max_seqs=batch, max_context=ctx + 1024, num_pages=pages,
                                                      window=256, small_batch_gemv=None if variants else False,
                                                      prefill_buckets=()))  # eager fill: no prefill graphs to capture
            runner.engine_fast = runner.fast
            fill(runner, batch, ctx, rule)
            rows = [(s, 1000 + s, rule) for s in range(batch)]
            runner.fill_decode(rows, batch)
            m = runner.model
            kv_bytes = int(runner.kv.row_lens[:, :batch].sum()) * m.D * 2 * 2
            point = {"shape": shape, "batch": batch, "context": ctx, "compression": cr, "weight_bytes": wbytes,
                     "kv_bytes": kv_bytes, "floor_ms": round((wbytes + kv_bytes) / bw * 1e3, 4)}
            names = list(variants) if variants else ["cublas", "l8_pdl", "l5_pdl"] if ctx > 1024 or batch > 4 else \
                ["cublas", "l8_pdl", "l6_pdl", "l5_pdl"] + (["l5_pdl_default"] if best else [])
            logits = {}
            for variant in names:  # every path from the same state, before any timing
                set_variant(runner, variant, best, capture=False)
                runner.fill_decode(rows, batch)
                logits[variant] = one_step_logits(runner, batch)
            for variant in names:
                set_variant(runner, variant, best)
                runner.fill_decode(rows, batch)
                if batch == 1 and ctx == 1024:
                    n, fams = kernel_table(runner, batch, steps=2)
                    point[f"{variant}_kernels_per_step"] = n
                    point[f"{variant}_top_kernels_us"] = {k: round(1000 * v, 1) for k, v in list(fams.items())[:12]}
                replay = [timed_steps(runner, rows) for _ in range(2)]
                engine = [timed_steps(runner, rows, readback=True) for _ in range(2)]
                point[variant] = {"replay_ms_runs": [round(x, 4) for x in replay],
                                  "engine_step_ms_runs": [round(x, 4) for x in engine],
                                  "replay_bw_fraction": round(point["floor_ms"] / statistics.median(replay), 3),
                                  "engine_tok_s": round(batch * 1000 / statistics.median(engine), 1)}
                if on_point is not None:
                    on_point(runner, rows, point, loaded, variant)
            if "cublas" in logits:
                ref = logits["cublas"].double()
                point["logits_rel_err_vs_cublas"] = {v: float((lg.double() - ref).norm() / ref.norm())
                                                     for v, lg in logits.items() if v != "cublas"}
            # same device functions, same plans; the in-kernel reduce's compiled sums may differ (NOTES v5)
            if "l5_pdl" in logits and "l8_pdl" in logits:
                point["l5_bit_identical_to_l8"] = bool(torch.equal(logits["l5_pdl"], logits["l8_pdl"]))
            if "l6_pdl" in logits and "l8_pdl" in logits:
                point["l6_bit_identical_to_l8"] = bool(torch.equal(logits["l6_pdl"], logits["l8_pdl"]))
            print(json.dumps(point), flush=True)
            out.append(point)
            runner.graphs = None
            del runner
            gc.collect()
            torch.cuda.empty_cache()
        del loaded
        gc.collect()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/decode_floor.json")
    ap.add_argument("--budget", type=float, default=200)
    ap.add_argument("--parts", default="kernels,steps,attention")
    ap.add_argument("--points", default=None, help="step points, e.g. qwen2.5-1.5b:1x1024x1,smollm2-135m:1x1024x1")
    ap.add_argument("--mats", default=None, help="kernel part: only these GEMMs, e.g. gate_up,lm_head")
    ap.add_argument("--rows", default="1,16", help="kernel part: row counts")
    ap.add_argument("--commit", default="unknown", help="the commit measured (written into the JSON)")
    a = ap.parse_args()
    res = {"card": torch.cuda.get_device_name(0), "triton": triton.__version__, "torch": torch.__version__,
           "has_pdl": HAS_PDL, "kernels": [], "sweep": [], "steps": [], "attention": [],
           "commit": a.commit, "argv": sys.argv[1:]}
    from budgetllm.benchmarks.baselines import measured_bandwidth

    res["copy_graph_bytes_s"] = ceiling()
    res["bandwidth_bytes_s"] = bw = measured_bandwidth()  # the matrix's ceiling (eager 2 GiB copy)
    print("bandwidth", round(bw / 1e12, 3), "TB/s; graphed copy", round(res["copy_graph_bytes_s"] / 1e12, 3), flush=True)
    parts = a.parts.split(",")
    best: dict = {}
    for name, fn in (("kernels", kernels_part), ("sweep", sweep_part), ("steps", steps_part),
                     ("attention", attention_part)):
        if name in parts:
            try:
                extra = [best] if name != "attention" else []
                if name == "steps" and a.points:
                    extra.append(parse_points(a.points))
                if name == "kernels":
                    extra += [a.mats, tuple(int(r) for r in a.rows.split(","))]
                if name == "sweep":
                    extra = [best]
                fn(bw, a.budget, res[name], *extra)
            except Exception as e:  # noqa: BLE001 - keep what the other parts measured
                import traceback

                traceback.print_exc()
                res.setdefault("errors", []).append(f"{name}: {e!r}")
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(res, indent=1))
    res["best_plans"] = {str(k): v for k, v in best.items()}
    res["seconds"] = round(time.perf_counter() - T0, 1)
    Path(a.out).write_text(json.dumps(res, indent=1))
