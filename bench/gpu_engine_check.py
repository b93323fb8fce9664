"""GPU check of the paged engine: its core correctness checks, then decode tokens/s (needs CUDA).

    python bench/gpu_engine_check.py [--quick] [--json bench/results/gpu_engine_check.json]

1. Tiny random models (float32): paged greedy == reference greedy at CR 1 and 8 with equal accounting;
   16 concurrent requests end with the pool fully free (host mirror and device allocator agree).
2. A random-weight Qwen2.5-1.5B-shaped model (bf16): decode tokens/s of the paged engine at CR 1
   (dense) and CR 8 (the "forced" eviction pattern: every KV head keeps exactly 1 token in 8 outside
   the 256-token window), batch 1 and 16, contexts 1K and 8K, and HF ``generate`` (dense cache) at
   the same points, measured as the benchmark matrix measures them (``budgetllm.benchmarks``).
3. A resumed turn (prefix reuse): time to first token of turn 2 with the parked compressed cache
   of turn 1 against a prefill of the whole conversation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def check_tiny() -> list[str]:
    from budgetllm import LLM
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.models.testing import make_tiny_checkpoint

    lines = []
    for arch, dms in (("qwen3", "borrowed"), ("llama", "adapter"), ("qwen2", None)):
        path = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "m", arch, dms)
        ref = LLM.from_pretrained(str(path), backend="reference", device="cuda", dtype=torch.float32, progress=False)
        backend = PagedBackend(ref.loaded, max_seqs=16, num_pages=4000, window=None if dms else 64)
        paged = LLM(ref.loaded, backend)
        for cr in (1, 8):
            a = ref.generate("Tell me about the sea and the ships.", compression=cr, max_tokens=40)
            b = paged.generate("Tell me about the sea and the ships.", compression=cr, max_tokens=40)
            same = a.token_ids == b.token_ids
            acct = (a.usage.kv.live_bytes, a.usage.kv.kv_bytes_read) == (b.usage.kv.live_bytes, b.usage.kv.kv_bytes_read)
            lines.append(f"tiny {arch}/{dms} CR {cr}: tokens {'EQUAL' if same else 'DIFFER'}, accounting "
                         f"{'EQUAL' if acct else 'DIFFER'} (achieved CR {b.usage.kv.compression_achieved})")
        outs: dict[int, object] = {}

        def go(i, llm=paged, outs=outs):
            outs[i] = llm.generate(f"Item {i}: " + "word " * (i * 3), compression=(1, 8)[i % 2], max_tokens=10 + i)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = backend.pool_stats()
        free_ok = st["pages_free"] == st["pages_total"] == backend.device_free_pages_now()
        lines.append(f"tiny {arch}/{dms}: 16 concurrent finished {len(outs)}/16, pool free "
                     f"{'OK' if free_ok else 'LEAK'} ({st['pages_free']}/{st['pages_total']})")
        backend.close()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="contexts 1K only, fewer tokens")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    if not args.skip_checks:
        for line in check_tiny():
            print(line, flush=True)
    from budgetllm.benchmarks.baselines import hf_generate_decode_rate
    from budgetllm.benchmarks.engine_bench import resumed_turn_ttft, run_batch
    from budgetllm.benchmarks.matrix import tokens_to_decode
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.models.testing import random_model

    loaded = random_model("qwen2.5-1.5b")
    t = time.perf_counter()
    backend = PagedBackend(loaded, max_seqs=16, memory_fraction=0.5, max_prefill_tokens=8192, max_context=8192 + 1024,
                           window=256, prefix_cache=2)
    print(f"paged engine ready in {time.perf_counter() - t:.1f}s: {backend.pool_stats()['pages_total']} pages", flush=True)
    contexts = [1024] if args.quick else [1024, 8192]
    rows = []
    for context in contexts:
        for batch in (1, 16):
            row = {"context": context, "batch": batch}
            for cr in (1, 8):
                r = run_batch(backend, loaded, batch, context, tokens_to_decode(48, batch, context), cr)
                row[f"paged_cr{cr}"] = asdict(r)
                print(f"  ctx {context} batch {batch} CR {cr}: {r.decode_tok_s:.0f} tok/s ({r.step_ms:.2f} ms/step "
                      f"over {r.full_batch_steps} full-batch steps; achieved CR {r.achieved_compression:.2f})",
                      flush=True)
            rows.append(row)
    turn = resumed_turn_ttft(backend, loaded, contexts[-1])
    print(f"  resumed turn at {contexts[-1]} tokens, CR 8: TTFT {turn['resumed_ttft_s'] * 1000:.1f} ms with the "
          f"parked cache vs {turn['full_ttft_s'] * 1000:.1f} ms from scratch ({turn['speedup']:.1f}x)", flush=True)
    backend.close()
    del backend
    torch.cuda.empty_cache()
    for row in rows:
        row["hf_generate"] = hf_generate_decode_rate(loaded.hf_model, row["batch"], row["context"], new_tokens=16)["tok_s"]
        print(f"  ctx {row['context']} batch {row['batch']} HF generate: {row['hf_generate']:.1f} tok/s", flush=True)
    print("\nQwen2.5-1.5B shape, random weights, bf16, decode tokens/s")
    print(f"{'context':>8} {'batch':>6} {'paged CR1':>10} {'paged CR8':>10} {'CR8/CR1':>8} {'HF gen':>8} {'CR1/HF':>7}")
    for r in rows:
        a, b, h = r["paged_cr1"]["decode_tok_s"], r["paged_cr8"]["decode_tok_s"], r["hf_generate"]
        print(f"{r['context']:>8} {r['batch']:>6} {a:>10.0f} {b:>10.0f} {b / a:>8.2f} {h:>8.1f} {a / h:>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows,
                                               "resumed_turn": turn}, indent=1))


if __name__ == "__main__":
    main()
