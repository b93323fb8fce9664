#!/usr/bin/env bash
# Issue 13, second round, one GPU call (<= 4 minutes on an H200), from the repository root:
#   bash bench/gpu_kernels_round2.sh           # results in $OUT if set, else bench/results
# 1. the GPU tests this round touched: the in-kernel attention reduce against the reduce kernel at
#    the 1.5B step shapes (bf16 and float32, 20 calls each: compiled sums or a race, NOTES v5) and
#    the gemv GPU tests (the new 8 x 512 wide plan);
# 2. bench/decode_floor.py steps (no sweep: every small-batch variant runs plan_for's plans, i.e.
#    the new defaults) at SmolLM2-135M 1K and the 1.5B shape 1K: cuBLAS, l8 (the default), l6, l5.
set -u
RES=${OUT:-bench/results}
mkdir -p "$RES"
export PYTHONPATH=$PWD:$PWD/integrations:$PWD/integrations/ray PYTHONUNBUFFERED=1
COMMIT=$(cat .gpu-commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
{ nvidia-smi -L; echo "commit $COMMIT"; date -u
  timeout 100 python3 -m pytest -m gpu tests/kernels/test_gpu_kernels.py tests/kernels/test_gemv.py -q -rfE \
    -p no:cacheprovider -k "fused_reduce or gemv"; } 2>&1 | tee "$RES/gpu-tests-kernels-round2.log"
timeout 130 python3 bench/decode_floor.py --parts steps --budget 120 --commit "$COMMIT" \
  --points "smollm2-135m:1x1024x1,qwen2.5-1.5b:1x1024x1" \
  --out "$RES/decode_floor-r2-h200.json" 2>&1 | tee "$RES/decode_floor-r2-h200.log" | grep -v "^\s*$" | tail -20
