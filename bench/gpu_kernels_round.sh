#!/usr/bin/env bash
# Issue 13, one GPU call, from the repository root (results in $OUT if set, else bench/results):
#   bash bench/gpu_kernels_round.sh         # full (<= 5 min): every kernel GPU test (tests/kernels -m gpu),
#       then bench/decode_floor.py: the wide gemv plan sweep of the 1.5B gate/up and LM head (picked by
#       measurement) and the batch-1 points (SmolLM2-135M 1K; Qwen2.5-1.5B 1K, 32K CR 1 / CR 8) for
#       cuBLAS and the 8-, 6- and 5-launch layers -> decode_floor-l5-h200.{json,log}
#   bash bench/gpu_kernels_round.sh check   # short (<= 4 min): the in-kernel attention reduce against the
#       reduce kernel at the 1.5B step shapes (bf16 and float32, 20 calls each: compiled sums or a race,
#       NOTES v5) and the gemv GPU tests; then the steps (no sweep, plan_for's plans) at SmolLM2 1K and
#       1.5B 1K -> decode_floor-r2-h200.{json,log}
# The long generations are a separate call (<= 3 minutes):
#   timeout 180 python3 bench/run.py --only long --budget-s 170 --out ${OUT:-bench/results}/long
set -u
mode=${1:-full}
RES=${OUT:-bench/results}
mkdir -p "$RES"
export PYTHONPATH=$PWD:$PWD/integrations:$PWD/integrations/ray PYTHONUNBUFFERED=1
COMMIT=$(cat .gpu-commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$mode" = check ]; then
  tests=(tests/kernels/test_gpu_kernels.py tests/kernels/test_gemv.py -k "fused_reduce or gemv"); log=round2; t=100
  parts=steps; budget=120; points="smollm2-135m:1x1024x1,qwen2.5-1.5b:1x1024x1"; tag=r2
else
  tests=(tests/kernels); log=round; t=120
  parts=sweep,steps; budget=170; tag=l5
  points="smollm2-135m:1x1024x1,qwen2.5-1.5b:1x1024x1,qwen2.5-1.5b:1x32768x8,qwen2.5-1.5b:1x32768x1"
fi
{ nvidia-smi -L; echo "commit $COMMIT"; date -u
  timeout $t python3 -m pytest -m gpu "${tests[@]}" -q -rfE -p no:cacheprovider; } 2>&1 | tee "$RES/gpu-tests-kernels-$log.log"
timeout $((budget + 8)) python3 bench/decode_floor.py --parts $parts --budget $budget --commit "$COMMIT" \
  --points "$points" --out "$RES/decode_floor-$tag-h200.json" 2>&1 | tee "$RES/decode_floor-$tag-h200.log" \
  | grep -v "^\s*$" | tail -40
