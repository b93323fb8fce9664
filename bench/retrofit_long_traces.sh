#!/usr/bin/env bash
# Retrain the SmolLM2-135M adapter on long self-distillation traces and compare it with the shipped
# one on held-out long text (4K and 8K): KL to dense, greedy agreement, passage-copy accuracy and
# achieved ratio per context length, against window / TOVA / H2O / random at equal kept tokens.
# GPU only (one H200: ~10 min of traces, ~15 min of training, ~10 min of evaluation). Not run in CI.
#
#   bash bench/retrofit_long_traces.sh [OUT_DIR]      # default bench/results/long_traces
set -euo pipefail
OUT=${1:-bench/results/long_traces}
mkdir -p "$OUT"
SHIPPED=budgetllm/data/adapters/smollm2-135m-instruct-dms.safetensors
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# 1. the model writes its own traces with the paged engine: thinking on, no eviction (the dense teacher);
#    prompts from the seeded generators (seed 21: not an evaluation seed), up to the 8K context
python -m budgetllm.cli make-traces --out "$OUT/traces.jsonl" --n 768 --max-tokens 7600 --min-tokens 1024 \
    --concurrency 64 --backend paged --seed 21

# 2. retrain the adapter on them, packed into 8K-token rows (window 256, CR 8, as the shipped one),
#    with a few long task texts; the threshold table is fitted on held-out rows (never trained on)
python -m budgetllm.cli retrofit --out "$OUT/smollm2-dms-long.safetensors" --data "$OUT/traces.jsonl" \
    --distill 0 --tasks 200 --seq-len 8192 --batch-size 2 --steps 300 --window 256 --target-cr 8 \
    --heldout 4 --checkpoint-dir "$OUT/ckpt" --device cuda

# 3. both adapters on the same held-out text (evaluation seeds 92-94), at 4K and 8K tokens
for ADAPTER in "$SHIPPED" "$OUT/smollm2-dms-long.safetensors"; do
  NAME=$(basename "$ADAPTER" .safetensors)
  for LEN in 4096 8192; do
    python bench/quality.py --adapter "$ADAPTER" --out "$OUT/$NAME-$LEN" --text-len "$LEN" --n-text 4 \
        --n-tasks 16 --n-copy 16 --device cuda
  done
  python - "$ADAPTER" "$OUT/$NAME-compression.json" <<'PY'
import json, sys
from budgetllm.dms.data import make_tasks, task_text_ids
from budgetllm.dms.thresholds import compression_at_lengths
from budgetllm.models import load_model
m = load_model(None, adapter=sys.argv[1], device="cuda", progress=False)
stream = [t for s in task_text_ids(m.tokenizer, make_tasks(40, seed=92, pairs=70, filler=140)) for t in s]
rows = [r for cr in (2, 4, 8) for r in compression_at_lengths(m, stream, (1024, 4096, 8192), compression=cr)]
open(sys.argv[2], "w").write(json.dumps({"adapter": sys.argv[1], "text": "make_tasks seed 92", "rows": rows}, indent=1))
PY
done
echo "results under $OUT: compare quality_*.json of both adapters (copy the ones worth keeping to bench/results/)"
