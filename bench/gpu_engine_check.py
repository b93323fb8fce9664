"""GPU check of the paged engine: its core correctness checks, then decode tokens/s (needs CUDA).

    python bench/gpu_engine_check.py [--quick] [--json bench/results/gpu_engine_check.json]

1. Tiny random models (float32): paged greedy == reference greedy at CR 1 and 8 with equal accounting;
   16 concurrent requests end with the pool fully free (host mirror and device allocator agree).
2. A random-weight Qwen2.5-1.5B-shaped model (bf16, config built in code): decode tokens/s of the
   paged engine at CR 1 (dense) and CR 8 (the "forced" eviction pattern: every KV head keeps exactly
   1 token in 8 outside the 512-token window), batch 1 and 16, contexts 1K and 8K, and HF
   ``generate`` (dense cache) at the same points. Decode rate = tokens of full-batch decode steps /
   their wall time (step start to step start, host work included), after warm-up.
3. A resumed turn (prefix reuse): time to first token of turn 2 with the parked compressed cache
   of turn 1 against a prefill of the whole conversation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from budgetllm.accounting.meter import KVMeter, KVShape  # noqa: E402
from budgetllm.engine.eviction import EvictionRule  # noqa: E402
from budgetllm.engine.generation import GenerationRequest  # noqa: E402
from budgetllm.engine.thinking import ThinkingController  # noqa: E402
from budgetllm.types import SamplingParams  # noqa: E402


def check_tiny() -> list[str]:
    from budgetllm import LLM
    from budgetllm.engine.paged_backend import PagedBackend
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


def qwen25_1p5b():
    from transformers import AutoModelForCausalLM, Qwen2Config

    from budgetllm.models.dms_spec import DMSSpec
    from budgetllm.models.loading import LoadedModel

    cfg = Qwen2Config(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                      head_dim=128, intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768,
                      tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    return LoadedModel(hf_model=hf, tokenizer=None, name="qwen2.5-1.5b-random", arch="qwen2",
                       dms=DMSSpec(variant="none", window=512), device=torch.device("cuda"), dtype=torch.bfloat16)


def _request(loaded, context: int, new: int, cr: int, seed: int) -> GenerationRequest:
    cfg = loaded.config
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(100, 30000, (context,), generator=g).tolist()
    rule = EvictionRule("forced", window=512, period=cr) if cr > 1 else EvictionRule("dense", window=512)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape = KVShape(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, loaded.dtype.itemsize)
    return GenerationRequest(prompt_ids=prompt, rule=rule, sampling=SamplingParams(),
                             controller=ThinkingController(None, 0, new, encode=lambda s: []),
                             meter=KVMeter(shape, cr, rule.mode), eos_ids=set())


def paged_rate(backend, loaded, batch: int, context: int, cr: int, new: int) -> dict:
    reqs = [_request(loaded, context, new, cr, seed=i) for i in range(batch)]
    backend.decode_log.clear()
    threads = [threading.Thread(target=lambda r=r: [None for _ in backend.run(r)]) for r in reqs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    full = [e for e in backend.decode_log if e[0] == batch][3:]  # skip warm-up steps
    span = full[-1][1] + full[-1][3] - full[0][1]
    kv = [r.meter.result() for r in reqs]
    med = lambda i: 1000 * statistics.median(e[i] for e in full)  # noqa: E731
    return {"tok_s": batch * len(full) / span, "step_ms": 1000 * span / len(full),
            "launch_ms": med(4), "readback_ms": med(2), "engine_ms": med(3), "wall_s": wall,
            "achieved_cr": sum(k.logical_bytes for k in kv) / max(1, sum(k.live_bytes for k in kv)),
            "reserved_bytes": sum(k.reserved_bytes for k in kv)}


def resumed_turn(backend, loaded, context: int) -> dict:
    """TTFT of a second turn with / without the parked compressed cache (the benchmarks' measurement)."""
    from budgetllm.benchmarks.engine_bench import resumed_turn_ttft

    r = resumed_turn_ttft(backend, loaded, context)
    return {"ttft_reused_s": r["resumed_ttft_s"], "ttft_scratch_s": r["full_ttft_s"], "speedup": r["speedup"]}


@torch.inference_mode()
def hf_rate(hf, batch: int, context: int, new: int = 32) -> float:
    ids = torch.randint(100, 30000, (batch, context), device="cuda")
    kw = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=None)

    def timed(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(2)
    return batch * (new - 1) / max(timed(new) - timed(1), 1e-9)


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
    from budgetllm.engine.paged_backend import PagedBackend

    loaded = qwen25_1p5b()
    t = time.perf_counter()
    backend = PagedBackend(loaded, max_seqs=16, memory_fraction=0.5, max_prefill_tokens=8192, max_context=8192 + 1024,
                           window=512, prefix_cache=2)
    print(f"paged engine ready in {time.perf_counter() - t:.1f}s: {backend.pool_stats()['pages_total']} pages", flush=True)
    contexts = [1024] if args.quick else [1024, 8192]
    new = 48 if args.quick else 96
    rows = []
    for context in contexts:
        for batch in (1, 16):
            row = {"context": context, "batch": batch}
            for cr in (1, 8):
                r = paged_rate(backend, loaded, batch, context, cr, new)
                row[f"paged_cr{cr}"] = r
                print(f"  ctx {context} batch {batch} CR {cr}: {r['tok_s']:.0f} tok/s ({r['step_ms']:.2f} ms/step: "
                      f"launched at {r['launch_ms']:.2f}, read back at {r['readback_ms']:.2f}, engine done at "
                      f"{r['engine_ms']:.2f}; achieved CR {r['achieved_cr']:.2f})", flush=True)
            backend.clear_prefix_cache()  # parked conversations hold pages on purpose
            for _ in range(200):
                if backend.pool_stats()["pages_free"] == backend.pool_stats()["pages_total"]:
                    break
                time.sleep(0.01)
            assert backend.pool_stats()["pages_free"] == backend.pool_stats()["pages_total"]
            rows.append(row)
    turn = resumed_turn(backend, loaded, contexts[-1])
    print(f"  resumed turn at {contexts[-1]} tokens, CR 8: TTFT {turn['ttft_reused_s'] * 1000:.1f} ms with the "
          f"parked cache vs {turn['ttft_scratch_s'] * 1000:.1f} ms from scratch ({turn['speedup']:.1f}x)", flush=True)
    backend.close()
    del backend
    torch.cuda.empty_cache()
    for row in rows:
        row["hf_generate"] = hf_rate(loaded.hf_model, row["batch"], row["context"])
        print(f"  ctx {row['context']} batch {row['batch']} HF generate: {row['hf_generate']:.1f} tok/s", flush=True)
    print("\nQwen2.5-1.5B shape, random weights, bf16, decode tokens/s")
    print(f"{'context':>8} {'batch':>6} {'paged CR1':>10} {'paged CR8':>10} {'CR8/CR1':>8} {'HF gen':>8} {'CR1/HF':>7}")
    for r in rows:
        a, b, h = r["paged_cr1"]["tok_s"], r["paged_cr8"]["tok_s"], r["hf_generate"]
        print(f"{r['context']:>8} {r['batch']:>6} {a:>10.0f} {b:>10.0f} {b / a:>8.2f} {h:>8.1f} {a / h:>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows,
                                               "resumed_turn": turn}, indent=1))


if __name__ == "__main__":
    main()
