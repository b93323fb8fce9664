#!/usr/bin/env bash
# Issue 13, one GPU call (<= 5 minutes on an H200), from the repository root:
#   bash bench/gpu_kernels_round.sh            # results in $OUT if set, else bench/results
# 1. the kernels' GPU tests (tests/kernels -m gpu: gemv, qkv_store, attention with its reduce inside,
#    the decode layer, ...), log with the card and the commit on its first lines;
# 2. bench/decode_floor.py: the wide gemv plan sweep of the 1.5B gate/up and LM head (time-boxed,
#    picked by measurement), then the batch-1 decode-floor points (SmolLM2-135M at 1K, the
#    Qwen2.5-1.5B shape at 1K and 32K CR 1 / CR 8) for the cuBLAS path and the 8-, 6- and 5-launch
#    layers, JSON with the card and the commit.
# The long generations (--only long, never run on a GPU yet) are a separate call (<= 3 minutes):
#   timeout 180 python3 bench/run.py --only long --budget-s 170 --out ${OUT:-bench/results}/long
set -u
RES=${OUT:-bench/results}
mkdir -p "$RES"
export PYTHONPATH=$PWD:$PWD/integrations:$PWD/integrations/ray PYTHONUNBUFFERED=1
COMMIT=$(cat .gpu-commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
{ nvidia-smi -L; echo "commit $COMMIT"; date -u
  timeout 120 python3 -m pytest -m gpu tests/kernels -q -rfE -p no:cacheprovider; } 2>&1 | tee "$RES/gpu-tests-kernels-round.log"
timeout 178 python3 bench/decode_floor.py --parts sweep,steps --budget 170 --commit "$COMMIT" \
  --points "smollm2-135m:1x1024x1,qwen2.5-1.5b:1x1024x1,qwen2.5-1.5b:1x32768x8,qwen2.5-1.5b:1x32768x1" \
  --out "$RES/decode_floor-l5-h200.json" 2>&1 | tee "$RES/decode_floor-l5-h200.log" | grep -v "^\s*$" | tail -40
