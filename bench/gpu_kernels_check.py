"""GPU check + timings of the paged DMS kernels (run on the H100: ``python bench/gpu_kernels_check.py``).

1. Runs the real-size GPU tests (``tests/kernels/test_gpu_kernels.py``, bf16, PAGE 16, window 512,
   rows up to 32K, NaN-poisoned pools).
2. Times ``paged_decode_attention`` (median of triton.testing.do_bench) for B in {1, 16, 64} and rows
   of 1K/8K/32K tokens, Qwen2.5-1.5B attention shape (H=2 KV heads, G=6, D=128, bf16), with pages in
   random order, against (a) the same kernel over pages in order and (b) dense SDPA over
   ``[B, H, T, D]`` K/V (enable_gqa). Bytes = K+V read once = B*H*T*D*2*2.
3. Times prefill attention (one 8K/32K sequence, empty rows, 85% flagged) against causal dense SDPA,
   and the store kernels.

Writes ``bench/results/gpu_kernels_<card>.json``. Options: ``--skip-tests``, ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial

import torch
import torch.nn.functional as F
import triton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from budgetllm.kernels import (  # noqa: E402
    PagedKV,
    dms_prefill_attention,
    paged_decode_attention,
    store_decode_kv,
    store_prefill_kv,
)
from budgetllm.kernels.decode_attention import default_num_splits  # noqa: E402

H, G, D, PAGE, WINDOW = 2, 6, 128, 16, 512


def run_tests() -> int:
    import pytest

    return pytest.main([os.path.join(ROOT, "tests/kernels"), "-m", "gpu", "-q", "-p", "no:cacheprovider"])


def _ms(fn) -> float:
    return triton.testing.do_bench(fn, return_mode="median")


def _store_fresh(kv, k, v, dec, sl) -> None:
    kv.row_lens.zero_()
    kv.block_tables.fill_(-1)
    kv.alloc_state.zero_()
    store_prefill_kv(kv, k, v, dec, 0, sl)


def make_rows(B: int, T: int, shuffle: bool, spare: int = 0) -> tuple[PagedKV, torch.Tensor]:
    """B sequences whose H rows all hold T live entries; pages in random (or sequential) order;
    `spare` free pages per row (and room in the block tables) for appends."""
    npg = triton.cdiv(T, PAGE)
    used = B * H * npg
    P = used + B * H * spare
    kv = PagedKV.allocate(num_pages=P, page_size=PAGE, head_dim=D, num_layers=1, max_slots=B, num_kv_heads=H,
                          max_pages_per_row=npg + spare, window=WINDOW, dtype=torch.bfloat16, device="cuda")
    kv.k_pool.normal_()
    kv.v_pool.normal_()
    pages = (torch.randperm(P, device="cuda") if shuffle else torch.arange(P, device="cuda")).int()
    kv.free_stack.copy_(pages)
    kv.block_tables[..., :npg] = pages[:used].view(1, B, H, npg)
    kv.row_lens.fill_(T)
    kv.alloc_state[0] = used
    return kv, torch.arange(B, dtype=torch.int32, device="cuda")


def bench_decode(quick: bool) -> list[dict]:
    rows = []
    scale = D**-0.5
    for B in (1, 16, 64):
        for T in (1024, 8192, 32768):
            if quick and T > 8192:
                continue
            kv, sl = make_rows(B, T, shuffle=True)
            q = torch.randn(B, H * G, D, device="cuda", dtype=torch.bfloat16)
            ns0 = default_num_splits(B, H, T, q.device)
            times = {}
            for ns in sorted({1, 2, 4, 8, 16, 32, ns0}):
                times[ns] = _ms(partial(paged_decode_attention, q, kv, 0, sl, scale, num_splits=ns))
            best = min(times, key=times.get)
            kv_seq, _ = make_rows(B, T, shuffle=False)
            t_seq = _ms(partial(paged_decode_attention, q, kv_seq, 0, sl, scale, num_splits=ns0))
            k = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            q4 = q.view(B, H * G, 1, D)
            t_sdpa = _ms(partial(F.scaled_dot_product_attention, q4, k, v, enable_gqa=True))
            kv = kv_seq = k = v = None
            nbytes = B * H * T * D * 2 * 2
            rows.append(dict(B=B, T=T, heuristic_splits=ns0, ms_heuristic=times[ns0], best_splits=best,
                             ms_best=times[best], ms_pages_in_order=t_seq, ms_sdpa_dense=t_sdpa,
                             GBps_heuristic=nbytes / times[ns0] / 1e6, GBps_best=nbytes / times[best] / 1e6,
                             GBps_sdpa=nbytes / t_sdpa / 1e6, all_splits_ms=times))
            r = rows[-1]
            print(f"decode B={B:3d} T={T:6d} | ours {r['ms_heuristic']:.4f} ms (splits {ns0}, "
                  f"{r['GBps_heuristic']:.0f} GB/s) best {r['ms_best']:.4f} ms (splits {best}, "
                  f"{r['GBps_best']:.0f} GB/s) | pages in order {t_seq:.4f} ms | dense SDPA {t_sdpa:.4f} ms "
                  f"({r['GBps_sdpa']:.0f} GB/s)", flush=True)
            torch.cuda.empty_cache()
    return rows


def bench_prefill(quick: bool) -> list[dict]:
    rows = []
    for T in (8192,) if quick else (8192, 32768):
        kv = PagedKV.allocate(num_pages=2 * H * (T // PAGE + 2), page_size=PAGE, head_dim=D, num_layers=1,
                              max_slots=1, num_kv_heads=H, max_pages_per_row=T // PAGE + 2, window=WINDOW,
                              dtype=torch.bfloat16, device="cuda")
        q = torch.randn(T, H * G, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        dec = torch.rand(T, H, device="cuda") < 0.85
        sl = torch.zeros(1, dtype=torch.int32, device="cuda")
        t_ours = _ms(partial(dms_prefill_attention, q, k, v, dec, kv, 0, sl, D**-0.5))
        t_64 = _ms(partial(dms_prefill_attention, q, k, v, dec, kv, 0, sl, D**-0.5, block_m=64))
        dec0 = torch.zeros_like(dec)
        t_nofl = _ms(partial(dms_prefill_attention, q, k, v, dec0, kv, 0, sl, D**-0.5))
        qd, kd, vd = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        t_sdpa = _ms(partial(F.scaled_dot_product_attention, qd, kd, vd, is_causal=True, enable_gqa=True))

        t_store = _ms(partial(_store_fresh, kv, k, v, dec, sl))
        flops = 4 * T * T / 2 * H * G * D
        rows.append(dict(T=T, ms_dms_85pct_flagged=t_ours, ms_dms_85pct_flagged_block_m64=t_64, ms_dms_no_flags=t_nofl, ms_sdpa_causal=t_sdpa,
                         TFLOPs_no_flags=flops / t_nofl / 1e9, ms_store_prefill=t_store))
        print(f"prefill T={T:6d} | DMS (85% flagged) {t_ours:.3f} ms (block_m 64: {t_64:.3f}) | DMS (no flags) {t_nofl:.3f} ms "
              f"({flops / t_nofl / 1e9:.0f} TFLOP/s) | causal SDPA {t_sdpa:.3f} ms | store_prefill_kv {t_store:.3f} ms",
              flush=True)
        kv = q = k = v = None
        torch.cuda.empty_cache()
    return rows


def bench_store_decode() -> dict:
    """store_decode_kv for B=64 rows of 4K (append path; 100 calls per timing, state restored)."""
    B, T, calls = 64, 4096, 100
    kv, sl = make_rows(B, T, shuffle=True, spare=8)
    kv.seq_pos.fill_(T)
    saved = [x.clone() for x in (kv.row_lens, kv.block_tables, kv.alloc_state)]
    k = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
    dec = torch.zeros(B, H, dtype=torch.bool, device="cuda")
    times = []
    for _ in range(5):
        for x, y in zip((kv.row_lens, kv.block_tables, kv.alloc_state), saved, strict=True):
            x.copy_(y)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            store_decode_kv(kv, k, k, dec, 0, sl)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls * 1000)
    assert int(kv.alloc_state[1]) == 0
    us = sorted(times)[len(times) // 2]
    print(f"store_decode_kv B={B} H={H}: {us:.1f} us per call (launch included)", flush=True)
    return dict(B=B, us=us)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    card = torch.cuda.get_device_name()
    print(f"device: {card}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    rc = 0 if args.skip_tests else run_tests()
    print(f"gpu tests: {'passed' if rc == 0 else f'FAILED (pytest rc={rc})'}", flush=True)
    res = dict(card=card, torch=torch.__version__, triton=triton.__version__, tests_rc=int(rc),
               decode=bench_decode(args.quick), prefill=bench_prefill(args.quick), store_decode=bench_store_decode())
    out = os.path.join(ROOT, "bench/results", f"gpu_kernels_{card.replace(' ', '_')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
