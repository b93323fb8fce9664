"""A wider plan sweep of the fused skinny GEMM at one row, for the GEMMs that lose to cuBLAS (the
Qwen2.5-1.5B gate/up and LM head), picked by measurement: ``decode_floor.py --parts sweep,steps``.

Why they lose (bench/NOTES.md v3): gate/up 23.2 us vs cuBLAS 17.4-18.9, LM head 129 vs 110 us. Both
have K = 1536, so a program's K loop is 1.5-6 tiles long: the RMSNorm prologue (rstd over all of K,
per program) and the first tile's latency are not hidden behind a steady state, and the 3-D FMA
accumulator ([rows, BLOCK_N, BLOCK_K] fp32) holds 64 registers per thread at the default plan.
The sweep varies what could change that, each candidate a CUDA-graph replay over weight copies 3x
the L2 (every call streams from HBM):

* tile shape ``BLOCK_N x BLOCK_K`` (16-byte loads per thread: 16 to 64 bf16 elements per thread);
* warps 4 / 8, pipeline stages 1 / 3;
* ``red``: the per-iteration reduction (a [rows, BLOCK_N] accumulator, ``gemv``'s plan entry 6);
* split-K 1 / 2 (K = 1536: two splits of 768 shorten each program, more programs in flight).

Candidates run in a fixed order, the defaults first, each GEMM within its own time box; the
fastest (with PDL off, like cuBLAS) goes into ``best`` for the step part, whose "l5_pdl" variant
then runs the swept plans next to "l5_pdl_default" (``plan_for``'s).
"""

from __future__ import annotations

import json
import math
import random
import time

import torch
import torch.nn.functional as F

from bench.decode_floor_attention import graph_us, left
from budgetllm.kernels.gemv import GLU_PAIRS, GemvWorkspace, gemv, plan_for

SWEEP_MATS = {"gate_up": (8960, 1536, True), "lm_head": (151936, 1536, False)}  # Qwen2.5-1.5B, (N, K, glu)


def candidates(N: int, K: int, sms: int) -> list[tuple]:
    """Plans ``(BLOCK_N, BLOCK_K, SPLIT_K, warps, stages, red)`` at one bf16 row: ``plan_for``'s
    first (with and without ``red``), then the grid with 16 to 64 elements of the weight tile per
    thread in a fixed shuffled order (a time box cut short still samples the whole grid)."""
    first = plan_for(N, K, 1, 2, sms)
    out = [(*first, 0), (*first, 1)]
    grid = []
    for warps in (4, 8):
        for bn in (8, 16, 32, 64):
            for bk in (256, 512, 1024):
                per_thread = bn * bk // (32 * warps)
                if not 16 <= per_thread <= 64 or bk > K:
                    continue
                for split in (1, 2):
                    for stages in ((1, 3) if K // split > bk else (1,)):
                        for red in (0, 1):
                            p = (bn, bk, split, warps, stages, red)
                            if p not in out:
                                grid.append(p)
    random.Random(0).shuffle(grid)
    return out + grid


def ws_size(N: int, K: int, plan: tuple) -> tuple[int, int]:
    """``(partial floats, counters)`` ``gemv`` needs for ``plan`` at one row (its own split rounding)."""
    bn, bk, split = plan[:3]
    k_split = math.ceil(math.ceil(K / split) / bk) * bk
    split, nb = math.ceil(K / k_split), math.ceil(N / bn)
    return split * nb * 2 * bn, nb


def fits(ws: GemvWorkspace, N: int, K: int, plan: tuple, glu: bool) -> bool:
    """Whether ``ws`` holds ``plan``'s scratch: ``gemv`` uses it with split K > 1 or gate/up pairs
    (``GLU_PAIRS``), the cases where it raises "gemv workspace too small" (the LM head's 8-wide
    split-2 plans: 18,992 column blocks > the engine's 16,384 counters)."""
    part, cnt = ws_size(N, K, plan)
    used = ws_size(N, K, plan[:2] + (1,))[0] != part or (glu and GLU_PAIRS)
    return not used or (ws.part.numel() >= part and ws.cnt.numel() >= cnt)


def sweep_part(bw: float, budget: float, out: list, best: dict, per_mat_s: float = 25.0) -> None:
    """Per GEMM: cuBLAS (``F.linear``), the default plan, then candidates until ``per_mat_s`` passes."""
    ws = GemvWorkspace("cuda")  # the engine's size (DecodeLayers'); plans that need more get their own
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name, (N, K, glu) in SWEEP_MATS.items():
        rows_w = 2 * N if glu else N
        nbytes = rows_w * K * 2
        copies = max(1, math.ceil(3 * 60e6 / nbytes))
        ws_ = [torch.randn(rows_w, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        nw = torch.rand(K, device="cuda", dtype=torch.bfloat16) + 0.5
        kw = {"norm": (nw, 1e-6), "glu": True} if glu else {"norm": (nw, 1e-6), "out_f32": True}
        times = {"cublas_linear": graph_us([lambda w=w, x=x: F.linear(x, w) for w in ws_])}
        t_end = time.perf_counter() + per_mat_s
        tried = cands = candidates(N, K, sms)
        big: list[str] = []  # plans whose split-K scratch exceeds the engine's workspace
        for i, plan in enumerate(cands):
            if time.perf_counter() > t_end or left(budget) < 0:
                tried = cands[:i]
                break
            pws = ws
            if not fits(ws, N, K, plan, glu):  # measured with a workspace of its size, never picked (below)
                pws = GemvWorkspace("cuda", *ws_size(N, K, plan))
                big.append(str(plan))
            try:
                times[str(plan)] = graph_us([lambda w=w, x=x, kw=kw, plan=plan, pws=pws: gemv(
                    x, w, ws=pws, plan=plan, **kw) for w in ws_])
            except Exception as e:  # noqa: BLE001 - e.g. out of resources for one plan
                times[str(plan)] = None
                print(name, plan, repr(e)[:160], flush=True)
        # the step part runs the engine's workspace: a plan that does not fit it is reported, not picked
        ok = {k: v for k, v in times.items() if v is not None and k.startswith("(") and k not in big}
        bname = min(ok, key=ok.get)
        plan = tuple(int(t) for t in bname[1:-1].split(","))
        best[(N, K, glu, 1)] = plan
        times["best_pdl"] = graph_us([lambda w=w, x=x, kw=kw, plan=plan: gemv(x, w, ws=ws, plan=plan, pdl=True, **kw)
                                       for w in ws_])
        row = {"mat": name, "N": N, "K": K, "bytes": nbytes, "tried": len(tried), "of": len(cands),
               "default_plan": str(cands[0]), "best_plan": bname, "needs_larger_workspace": big,
               "us": {k: (round(v, 2) if v is not None else None) for k, v in times.items()},
               "bw_fraction": {k: round(nbytes / (v * 1e-6) / bw, 3) for k, v in times.items() if v}}
        out.append(row)
        print(json.dumps({k: row[k] for k in ("mat", "tried", "of", "default_plan", "best_plan")} |
                         {"cublas": row["us"]["cublas_linear"], "default": row["us"][str(cands[0])],
                          "best": row["us"][bname], "best_pdl": row["us"]["best_pdl"]}), flush=True)
        del ws_
    torch.cuda.empty_cache()

