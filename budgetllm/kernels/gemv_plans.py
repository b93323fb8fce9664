"""The launch plan of ``gemv`` (kernels/gemv.py): tile sizes, split-K, warps and stages per shape.

A plan is ``(BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)``, optionally with a 6th entry
``red`` (FMA path: reduce over K every iteration). On CUDA ``plan_for`` derives it from the shapes
and the SM count (the rule fitted to the H200 sweeps of bench/decode_floor.py and bench/gemv_sweep.py);
under the Triton interpreter ``gemv_plan`` picks few large programs and still splits K, so the
split-K path runs on the CPU too. ``m_pad`` and ``mode`` give the rows of the kernel's tile and
its accumulation mode (its ``M_PAD`` and ``DOT`` constexprs). Plans depend on shapes only, so a
CUDA graph captured with one stays valid.
"""

from __future__ import annotations

import torch
import triton

__all__ = ["FMA_ROWS", "MAX_ROWS", "GemvPlan", "gemv_plan", "m_pad", "mode", "plan_for"]

MAX_ROWS = 16  # one 16-row tl.dot tile; larger batches stay on cuBLAS
FMA_ROWS = 4  # up to this many rows: fp32 FMAs (no tensor cores, no shared memory); above: tl.dot
GemvPlan = tuple[int, ...]  # (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages[, red])


def m_pad(M: int) -> int:
    """Rows of the kernel's tile: 1, 2 or 4 (FMA path), else 16 (one tl.dot tile)."""
    return triton.next_power_of_2(max(M, 1)) if M <= FMA_ROWS else MAX_ROWS


def mode(mp: int, red: list) -> int:
    """The kernel's DOT constexpr: 1 tl.dot (> 4 rows), 2 FMAs reduced every iteration (``red``), 0 FMAs."""
    return 1 if mp > FMA_ROWS else 2 if red and red[0] else 0


def plan_for(N: int, K: int, M: int, itemsize: int, sms: int) -> tuple[int, int, int, int, int]:
    """The CUDA plan ``(BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)``, from the H200 sweep of
    bench/decode_floor.py (results/decode_floor-h200.json): at one row narrow outputs 8 x 1024 bf16, 8 warps,
    1 stage; wide ones (1.5B gate/up, LM heads) 8 x 512, 4 warps, 3 stages (the wider sweep of
    results/decode_floor-l5-h200.json: gate/up 23.2 us vs 23.75 for 16 x 512, LM head 126.2 vs 130.7);
    K split to ~2 programs per SM (at most one split per 1024 of K); tiles shrink with rows (registers)
    and wider dtypes (same bytes)."""
    target = 2 * sms
    if M <= FMA_ROWS:
        wide = triton.cdiv(N, 8) >= 4 * sms
        bn, bk, warps, stages = (8, 512, 4, 3) if wide else (8, 1024, 8, 1)
        bk = bk * 2 // itemsize // m_pad(M)
    else:  # the 16-row tl.dot tile (not used by the engine by default: cuBLAS was faster there)
        bn, bk, warps, stages = (64, 128, 8, 2) if triton.cdiv(N, 32) >= 8 * sms else (32, 128, 4, 3)
        bk = bk * 2 // itemsize
    bk = min(bk, max(16, triton.next_power_of_2(K)))
    split = max(1, min(triton.cdiv(target, triton.cdiv(N, bn)), K // 1024))
    return bn, bk, split, warps, stages


def gemv_plan(N: int, K: int, device: torch.device, M: int = 1, itemsize: int = 2) -> tuple[int, int, int, int, int]:
    """``(BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)`` from shapes only (graph friendly)."""
    if device.type != "cuda":  # the interpreter: few large (numpy) programs; split K to exercise it
        return max(16, min(512, triton.next_power_of_2(triton.cdiv(N, 4)))), 64, 2 if K >= 128 else 1, 4, 1
    return plan_for(N, K, M, itemsize, torch.cuda.get_device_properties(device).multi_processor_count)
