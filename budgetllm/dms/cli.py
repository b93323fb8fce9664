"""``budgetllm retrofit`` and ``budgetllm eval``: argparse subcommands (wired into budgetllm/cli.py)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_retrofit_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("retrofit", help="train DMS eviction decisions for a model (writes an adapter file)",
                              description="Retrofit DMS: distil the model into itself with learned KV eviction.")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf (default: the embedded SmolLM2)")
    p.add_argument("--out", required=True, help="adapter path (NAME.safetensors; NAME.json is written beside it)")
    p.add_argument("--target-cr", type=float, default=8.0)
    p.add_argument("--window", type=int, default=256, help="tokens a marked token stays visible (paper: 256)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ramp-fraction", type=float, default=2 / 3, help="CR reaches the target after this part of the steps")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None,
                   help="default: 3e-5 for --scope full (NVIDIA's value), 5e-4 for the adapter (see docs/retrofit.md)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="scope full: steps at ratio 1 while the borrowed channel is zeroed (default: 10%% of --steps)")
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--scope", choices=("adapter", "full"), default="adapter",
                   help="adapter: train dms_proj_alpha only (base frozen); full: borrowed channel + all weights")
    p.add_argument("--data", nargs="*", default=[], help=".txt/.md/.jsonl files to train on (added to the generators)")
    p.add_argument("--no-builtin", action="store_true", help="do not use the built-in task generators")
    p.add_argument("--distill", type=int, default=256, help="teacher continuations to generate (0: none)")
    p.add_argument("--distill-tokens", type=int, default=256)
    p.add_argument("--tasks", type=int, default=600, help="built-in long task texts to pack")
    p.add_argument("--heldout", type=int, default=4, help="held-out rows for the threshold table")
    p.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints go here")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--export-nvidia", default=None, help="also write an NVIDIA-style checkpoint directory here")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=retrofit_command)
    return p


def retrofit_command(args) -> int:
    from budgetllm.dms.data import load_text_files, make_tasks, pack, self_distill, task_text_ids
    from budgetllm.dms.export import export_nvidia, plot_training_curve, write_adapter, write_thresholds
    from budgetllm.dms.thresholds import fit_threshold_table
    from budgetllm.dms.train import RetrofitConfig, RetrofitConfigError, Retrofitter
    from budgetllm.models import load_model
    from budgetllm.models.dms_spec import DMSSpec

    cfg = RetrofitConfig(target_cr=args.target_cr, window=args.window, steps=args.steps,
                         ramp_fraction=args.ramp_fraction, lr=args.lr, batch_size=args.batch_size,
                         seq_len=args.seq_len, tau=args.tau, scope=args.scope, seed=args.seed,
                         warmup_steps=args.warmup_steps)
    cfg.validate()  # fail before loading anything
    if args.no_builtin and not args.data:
        raise RetrofitConfigError("--no-builtin needs --data FILE...: there is nothing else to train on")
    loaded = load_model(args.model, device=args.device, progress=not args.no_progress)
    if loaded.dms.variant != "none" and args.scope == "adapter" and loaded.dms.variant != "adapter":
        raise RetrofitConfigError(f"the model already has {loaded.dms.variant!r} decisions; scope 'adapter' needs a plain model")
    if loaded.dms.variant == "adapter" and args.model is None:
        loaded.dms = DMSSpec(norm_eps=loaded.dms.norm_eps)  # retrain the embedded model from scratch
    tok = loaded.tokenizer
    seqs = load_text_files(args.data, tok) if args.data else []
    if not args.no_builtin:
        if args.distill:
            prompts = make_tasks(args.distill, seed=args.seed + 11,
                                 kinds=("open", "arithmetic", "variable_tracking", "kv_retrieval"), pairs=30, filler=40)
            seqs += self_distill(loaded.hf_model, tok, prompts, max_new_tokens=args.distill_tokens,
                                 seed=args.seed, progress=not args.no_progress)
        seqs += task_text_ids(tok, make_tasks(args.tasks, seed=args.seed + 12, pairs=70, filler=140, hops=4))
    rows = pack(seqs, args.seq_len, seed=args.seed, min_rows=args.batch_size + args.heldout)
    held, train_rows = rows[: args.heldout], rows[args.heldout:]
    trainer = Retrofitter(loaded, cfg, train_rows, checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume)
    trainer.train(progress=not args.no_progress)
    out = Path(args.out).with_suffix(".safetensors")
    name = args.model or "SmolLM2-135M-Instruct (embedded)"
    loaded.dms = trainer.trained_spec()  # the trained settings (window, ratio, weights) before anything is written
    table, records = fit_threshold_table(loaded, [r.tolist() for r in held], progress=not args.no_progress)
    fit = {"method": "per-(layer, KV head) shift of the trained eviction shares (budgetllm.dms.thresholds)",
           "data": f"{len(held)} held-out rows of {args.seq_len} tokens (not trained on)", "records": records}
    loaded.dms.threshold_table, loaded.dms.threshold_fit = table, fit
    if args.scope == "full":
        target = Path(args.export_nvidia) if args.export_nvidia else out.with_suffix("")
        export_nvidia(loaded, None, target, include_weights=True)
        write_thresholds(target / "dms_thresholds.json", table, fit)
        print(f"full-model retrofit written to {target}")
        return 0
    summary = trainer.summary()
    write_adapter(out, trainer.adapter_file(name), table, extra={"training": summary, "threshold_fit": fit})
    plot_training_curve(trainer.history, out.with_suffix(".png"), title=f"DMS retrofit: {name}")
    (out.parent / (out.stem + ".history.json")).write_text(json.dumps(trainer.history))
    if args.export_nvidia:
        export_nvidia(loaded, trainer.adapter_file(name), args.export_nvidia)
    print(f"adapter written to {out} (threshold table: {len(table)} ratios per layer and KV head); use it with "
          f"LLM.from_pretrained({args.model!r}, adapter={str(out)!r})")
    return 0


def add_eval_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="quality of DMS against training-free eviction (KL, agreement, accuracy)")
    p.add_argument("--model", default=None)
    p.add_argument("--adapter", default=None)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--ratios", default="2,4,8")
    p.add_argument("--methods", default="dms,window,tova,h2o,random")
    p.add_argument("--n-text", type=int, default=4)
    p.add_argument("--n-tasks", type=int, default=16)
    p.add_argument("--text-len", type=int, default=2048)
    p.add_argument("--heldout", default=None, help="JSON list of held-out token ids")
    p.add_argument("--device", default=None)
    p.set_defaults(func=eval_command)
    return p


def eval_command(args) -> int:
    from budgetllm.benchmarks import quality as bench_quality
    argv = ["--out", args.out, "--ratios", args.ratios, "--methods", args.methods, "--n-text", str(args.n_text),
            "--n-tasks", str(args.n_tasks), "--text-len", str(args.text_len)]
    for flag in ("model", "adapter", "heldout", "device"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    t0 = time.time()
    bench_quality.main(argv)
    print(f"eval finished in {time.time() - t0:.0f}s; results under {args.out}")
    return 0


def add_calibrate_thresholds_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate-thresholds", help="fit per-(layer, KV head) thresholds for every ratio",
                              description="Fit a DMS checkpoint's threshold table once, over a text sample, so that "
                                          "per-call ratios need no extra pass (docs/retrofit.md).")
    p.add_argument("--model", default=None, help="HF id, local directory or .gguf (default: the embedded SmolLM2)")
    p.add_argument("--adapter", default=None, help="an adapter file: its table is rewritten in place")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--text", nargs="*", default=[], help=".txt/.md/.jsonl sample (default: built-in task texts)")
    p.add_argument("--rows", type=int, default=4, help="sample rows")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per row (must exceed the window + 1)")
    p.add_argument("--seed", type=int, default=7001, help="built-in sample seed (evaluation text uses 92/93)")
    p.add_argument("--out", default=None, help="table file (default: beside a local checkpoint, or into --adapter)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=calibrate_thresholds_command)
    return p


def sample_rows(tok, files, rows: int, seq_len: int, seed: int) -> tuple[list[list[int]], str]:
    """Token rows to fit on: the given files, or seeded built-in task texts (never the evaluation seeds)."""
    from budgetllm.dms.data import load_text_files, make_tasks, pack, task_text_ids

    if files:
        seqs, what = load_text_files(files, tok), f"files {', '.join(map(str, files))}"
    else:
        seqs = task_text_ids(tok, make_tasks(max(8, rows * seq_len // 600), seed=seed, pairs=70, filler=140, hops=4))
        what = f"built-in task texts, seed {seed}"
    packed = pack(seqs, seq_len, seed=seed, min_rows=rows)[:rows]
    return [r.tolist() for r in packed], f"{len(packed)} rows of {seq_len} tokens from {what}"


def calibrate_thresholds_command(args) -> int:
    from budgetllm.dms.export import write_adapter, write_thresholds
    from budgetllm.dms.thresholds import fit_threshold_table
    from budgetllm.models import load_adapter_file, load_model
    from budgetllm.models.loading import THRESHOLDS_FILE, resolve_adapter

    loaded = load_model(args.model, device=args.device, adapter=args.adapter, tokenizer=args.tokenizer, progress=False)
    seq_len = min(args.seq_len, loaded.max_context)
    rows, what = sample_rows(loaded.tokenizer, args.text, args.rows, seq_len, args.seed)
    t0 = time.time()
    table, records = fit_threshold_table(loaded, rows)
    fit = {"method": "per-(layer, KV head) shift of the trained eviction shares (budgetllm.dms.thresholds)",
           "data": what, "seconds": round(time.time() - t0, 1), "records": records}
    if args.out:
        dest = write_thresholds(args.out, table, fit)
    elif args.adapter:
        path = resolve_adapter(args.adapter)
        file = load_adapter_file(path)
        dest = write_adapter(path, file, table, extra={"threshold_fit": fit})
    elif args.model and Path(args.model).is_dir():
        dest = write_thresholds(Path(args.model) / THRESHOLDS_FILE, table, fit)
    else:
        raise SystemExit("calibrate-thresholds: pass --out FILE (then load with thresholds=FILE)")
    print(f"threshold table ({len(table)} ratios x {len(next(iter(table.values())))} layers) written to {dest}")
    return 0
