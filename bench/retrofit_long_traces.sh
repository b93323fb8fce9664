#!/usr/bin/env bash
# The long-trace retrain of the SmolLM2-135M adapter and its comparison with the shipped one, on ONE H200,
# time-boxed: bench/retrofit_long_traces.py's defaults are this run (a 430 s budget: traces until 20 %,
# training until 55 %, comparison until 78 %, then the shipped adapter's quality table); every stage writes
# its results before the next starts, and `timeout 560` is the hard stop (the command ends within 9.5 min).
#
#   bash bench/retrofit_long_traces.sh [ROOT]      # ROOT: where bench/results/... is written (default .)
#
# Writes (paths under ROOT mirror the repository, so they can be copied in as they are):
#   bench/results/dms_long/dms_long_compare_<card>.json   retrained vs shipped at 4K/8K, baselines, copy,
#                                                         and "recommendation" (budgetllm.dms.compare.recommend)
#   bench/results/dms_long/adapter/smollm2-135m-instruct-dms.{safetensors,json,history.json}  (~330 KB)
#   bench/results/dms_long/traces_split.json, run.log
#   bench/results/quality_smollm2-135m-instruct_<card>.{json,png}   the shipped adapter, script-written
#   and the traces themselves in ${DMS_WORK:-/tmp/dms_long_work}/traces.jsonl (megabytes; not for git)
set -uo pipefail
ROOT=${1:-.}
RES=$ROOT/bench/results
WORK=${DMS_WORK:-/tmp/dms_long_work}
mkdir -p "$RES/dms_long" "$WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout 560 python3 bench/retrofit_long_traces.py --out "$RES/dms_long" --work "$WORK" \
    --device cuda --quality-out "$RES" 2>&1 | tee "$RES/dms_long/run.log"
echo "exit ${PIPESTATUS[0]}; results under $RES"
