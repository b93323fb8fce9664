"""Part 4 of bench/decode_floor.py: decode attention over uneven per-head rows (Qwen2.5-1.5B shape).

A step's 28 attention launches (one per layer) over rows of a 32K context at CR 8, captured in one
graph: uniform rows (every head keeps T / 8) against the uneven pattern of the embedded SmolLM2's
trained adapter on real text (bench/results/smollm2_head_kept.json: kept fraction per layer and KV
head), mapped onto 28 layers x 2 heads and scaled to the same mean (so both read the same bytes).
Pages are scattered (a random permutation of the pool), as after a long run of the allocator.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from budgetllm.kernels import PagedKV, paged_decode_attention
from budgetllm.kernels.decode_attention import default_num_splits

T0 = time.perf_counter()


def left(budget: float) -> float:
    """Seconds left of the script's budget."""
    return budget - (time.perf_counter() - T0)


def graph_us(fns, reps: int = 20) -> float:
    """Median over 5 timings of ``reps`` replays of one graph holding ``fns`` in order: us per call."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(5):
        s.record()
        for _ in range(reps):
            g.replay()
        e.record()
        torch.cuda.synchronize()
        ts.append(1000 * s.elapsed_time(e) / reps / len(fns))
    del g
    return statistics.median(ts)


HEAD_KEPT = Path(__file__).resolve().parent / "results" / "smollm2_head_kept.json"
L, H, G, D, PAGE, WINDOW = 28, 2, 6, 128, 16, 256


def uneven_fractions(T: int, cr: float) -> tuple[list[list[float]], str]:
    """[L][H] kept fractions with mean 1 / cr: SmolLM2's real pattern (layers and heads resampled)."""
    if HEAD_KEPT.exists():
        src = json.loads(HEAD_KEPT.read_text())["kept_fraction"]
        how = f"SmolLM2 adapter on real text ({HEAD_KEPT.name}), resampled to {L}x{H}, scaled to CR {cr}"
    else:  # no file: a fixed lognormal spread (said so in the result)
        g = torch.Generator().manual_seed(0)
        src = torch.exp(torch.randn(L, H, generator=g) * 0.8).tolist()
        how = "synthetic lognormal (sigma 0.8): smollm2_head_kept.json missing"
    nl = len(src)
    f = torch.tensor([[src[round(li * (nl - 1) / (L - 1))][h % len(src[0])] for h in range(H)] for li in range(L)])
    lo = WINDOW / T
    for _ in range(20):  # scale to the mean, clip to [window / T, 1], repeat
        f = (f * (1.0 / cr) / f.mean()).clamp(lo, 1.0)
    return f.tolist(), how


def build(lens: torch.Tensor, B: int, device: str = "cuda") -> PagedKV:
    """A cache whose rows (l, s, h) have ``lens[l, h]`` entries in scattered pages, random K/V."""
    maxp = math.ceil(int(lens.max()) / PAGE) + 1
    need = (lens.div(PAGE, rounding_mode="floor") + 1).sum().item() * B
    kv = PagedKV.allocate(num_pages=int(need) + 16, page_size=PAGE, head_dim=D, num_layers=L, max_slots=B,
                          num_kv_heads=H, max_pages_per_row=maxp, window=WINDOW, device=device)
    kv.k_pool.normal_()
    kv.v_pool.normal_()
    perm = torch.randperm(kv.num_pages, generator=torch.Generator().manual_seed(1)).to(torch.int32)
    bt = torch.full(kv.block_tables.shape, -1, dtype=torch.int32)
    off = 0
    for li in range(L):
        for s in range(B):
            for h in range(H):
                np_ = math.ceil(int(lens[li, h]) / PAGE)
                bt[li, s, h, :np_] = perm[off:off + np_]
                off += np_
    kv.block_tables.copy_(bt)
    kv.row_lens.copy_(lens[:, None, :].expand(L, B, H).to(torch.int32))
    return kv


def _step(q, kv, slots, ns, balanced):
    """The step's L attention launches as callables."""
    return [lambda li=li: paged_decode_attention(q[li], kv, li, slots, D ** -0.5, num_splits=ns, balanced=balanced)
            for li in range(L)]


def attention_part(bw: float, budget: float, out: list) -> None:
    T, cr = 32768, 8.0
    frac, how = uneven_fractions(T, cr)
    patterns = {"uniform": torch.full((L, H), T / cr).round().long(),
                "uneven": (torch.tensor(frac) * T).round().long()}
    for B in (1, 16):
        for pname, lens in patterns.items():
            if left(budget) < 30:
                return
            kv = build(lens, B)
            q = torch.randn(L, B, H * G, D, device="cuda", dtype=torch.bfloat16)
            slots = torch.arange(B, dtype=torch.int32, device="cuda")
            ns = default_num_splits(B, H, kv.block_tables.shape[-1] * PAGE, q.device)
            kv_bytes = int(lens.sum()) * B * D * 2 * 2
            for balanced in (False, True):
                us = graph_us(_step(q, kv, slots, ns, balanced))
                out.append({"batch": B, "context": T, "compression": cr, "pattern": pname, "balanced": balanced,
                            "num_splits": ns, "us_per_layer": round(us, 2), "step_attention_ms": round(us * L / 1e3, 4),
                            "kv_bytes_per_step": kv_bytes,
                            "bw_fraction": round(kv_bytes / (us * L * 1e-6) / bw, 3),
                            "longest_row": int(lens.max()), "mean_row": float(lens.float().mean()),
                            "pattern_source": how if pname == "uneven" else "T / CR every row"})
                print(json.dumps(out[-1]), flush=True)
            torch.cuda.empty_cache()
