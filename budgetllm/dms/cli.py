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
    p.add_argument("--lr", type=float, default=5e-4)
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
    from budgetllm.dms.export import export_nvidia, plot_training_curve, write_adapter
    from budgetllm.dms.thresholds import fit_threshold_table
    from budgetllm.dms.train import RetrofitConfig, RetrofitConfigError, Retrofitter
    from budgetllm.models import load_model
    from budgetllm.models.dms_spec import DMSSpec

    cfg = RetrofitConfig(target_cr=args.target_cr, window=args.window, steps=args.steps,
                         ramp_fraction=args.ramp_fraction, lr=args.lr, batch_size=args.batch_size,
                         seq_len=args.seq_len, tau=args.tau, scope=args.scope, seed=args.seed)
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
    if args.scope == "full":
        export_nvidia(loaded, None, args.export_nvidia or out.with_suffix(""), include_weights=True)
        print(f"full-model retrofit written to {args.export_nvidia or out.with_suffix('')}")
        return 0
    adapter = trainer.adapter_file(name)
    write_adapter(out, adapter)
    loaded.dms = trainer.trained_spec()
    table, records = fit_threshold_table(loaded, [r.tolist() for r in held], progress=not args.no_progress)
    summary = trainer.summary()
    summary["threshold_fit"] = records
    write_adapter(out, trainer.adapter_file(name), table, extra={"training": summary})
    plot_training_curve(trainer.history, out.with_suffix(".png"), title=f"DMS retrofit: {name}")
    (out.parent / (out.stem + ".history.json")).write_text(json.dumps(trainer.history))
    if args.export_nvidia:
        loaded.dms.threshold_table = table
        export_nvidia(loaded, trainer.adapter_file(name, {"threshold_table": table}), args.export_nvidia)
    print(f"adapter written to {out} (threshold table {table}); use it with "
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
