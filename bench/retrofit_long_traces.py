"""Retrain the DMS adapter on the model's own long traces and compare it with the shipped one (time-boxed).

    python bench/retrofit_long_traces.py --out DIR [--work DIR] [--quality-out DIR]   (defaults: the H200 run)

One process, five stages, each with a deadline inside the total budget, each writing its results
before the next starts (a run cut short still leaves them):
  1. traces   ``budgetllm make-traces`` in-process: the paged engine, thinking on, no eviction, seeded long
              task prompts (seed 21); every 8th trace is held out for evaluation, every 8th + 1 for the
              threshold fit -> WORK/traces.jsonl (+ lengths and split in DIR/traces_split.json)
  2. retrain  the adapter (window 256, CR 8) on the training traces packed into --seq-len rows; ``--init
              shipped`` continues from today's adapter at CR 8 (no ramp: a deadline cannot cut it mid-ramp),
              ``--init scratch`` ramps CR 1 -> 8 from zero weights -> DIR/adapter/<name>.safetensors
  3. fit      the per-(layer, KV head) threshold table on the fit traces (never trained on, never evaluated)
  4. compare  shipped vs retrained on held-out traces at each --lengths, CR 8 then 4, against window / TOVA /
              H2O / random at each adapter's kept budget, and passage copy -> DIR/dms_long_compare_<card>.json
              with the recommendation of budgetllm.dms.compare.recommend (the adoption rule)
  5. quality  the shipped adapter's quality table (budgetllm.benchmarks.quality.run_quality, nothing edited
              by hand) -> DIR/quality_<model>_<card>.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def save(path, obj):
    Path(path).write_text(json.dumps(obj, indent=1))


def card(device) -> str:
    return torch.cuda.get_device_name().replace(" ", "-").lower() if str(device).startswith("cuda") else "cpu"


def stage_traces(a, out):
    from budgetllm import LLM
    from budgetllm.dms.traces import generate_traces, write_traces

    llm = LLM.from_pretrained(a.model, device=a.device, backend=a.backend, progress=False)
    try:
        traces = generate_traces(llm, a.n_traces, seed=21, max_tokens=a.trace_max_tokens, min_tokens=a.min_trace_tokens,
                                 concurrency=a.concurrency, long_context=not a.short_prompts, progress=True,
                                 deadline=T0 + a.budget_s * a.traces_until)
        write_traces(Path(a.work or out) / "traces.jsonl", traces, model=a.model or llm.model_name)
    finally:
        llm.close()
    split = {"eval": [i for i in range(len(traces)) if i % 8 == 0], "fit": [i for i in range(len(traces)) if i % 8 == 1]}
    split["train"] = [i for i in range(len(traces)) if i % 8 > 1]
    lens = [t["tokens"] for t in traces]
    info = {"n": len(traces), "tokens": sum(lens), "min": min(lens, default=0), "max": max(lens, default=0),
            "mean": round(sum(lens) / max(1, len(lens))), "kinds": sorted({t["kind"] for t in traces}),
            "seconds": round(time.time() - T0, 1), "split": split}
    save(out / "traces_split.json", info)
    log(f"traces: {info['n']} traces, {info['tokens']} tokens (mean {info['mean']}, max {info['max']})")
    return traces, split, {k: v for k, v in info.items() if k != "split"}


def stage_retrain(a, out, traces, split, summary):
    from budgetllm.dms.data import make_tasks, pack, task_text_ids
    from budgetllm.dms.export import write_adapter
    from budgetllm.dms.thresholds import fit_threshold_table
    from budgetllm.dms.train import RetrofitConfig, Retrofitter
    from budgetllm.models import load_model
    from budgetllm.models.dms_spec import DMSSpec

    loaded = load_model(a.model, device=a.device, progress=False)
    seq_len = min(a.seq_len, loaded.max_context)
    train = [traces[i]["ids"] for i in split["train"]]
    fit = [traces[i]["ids"] for i in split["fit"]]
    if not train or not fit:  # too few traces within the deadline: long built-in task texts (recorded)
        extra = task_text_ids(loaded.tokenizer, make_tasks(64, seed=33, pairs=400, filler=900, hops=6))
        train, fit = train or extra[8:], fit or extra[:8]
        summary["fallback"] = "too few traces: built-in long task texts (seed 33) filled the train/fit sets"
    if a.init == "scratch" or loaded.dms.variant != "adapter":
        loaded.dms = DMSSpec(norm_eps=loaded.dms.norm_eps)
    lr = a.lr or (2e-4 if a.init == "shipped" else None)  # a warm start moves less than a zero projection
    cfg = RetrofitConfig(target_cr=8.0, window=a.window, steps=a.steps, batch_size=a.batch_size, seq_len=seq_len,
                         lr=lr, initial_cr=8.0 if a.init == "shipped" else 1.0, seed=0)
    rows = pack(train, seq_len, seed=0, min_rows=a.batch_size)
    trainer = Retrofitter(loaded, cfg, rows, checkpoint_dir=None)
    log(f"retrain: {rows.shape[0]} rows of {seq_len} tokens, init {a.init}, up to {a.steps} steps")
    trainer.train(progress=True, deadline=T0 + a.budget_s * a.train_until)
    loaded.dms = trainer.trained_spec()
    fit_rows = pack(fit, seq_len, seed=1, min_rows=1)[: a.fit_rows]
    table, records = fit_threshold_table(loaded, [r.tolist() for r in fit_rows])
    fit_rec = {"method": "per-(layer, KV head) shift of the trained eviction shares (budgetllm.dms.thresholds)",
               "data": f"{len(fit_rows)} rows of {seq_len} tokens from the fit traces (never trained on or evaluated)",
               "records": records}
    name = a.model or "SmolLM2-135M-Instruct (embedded)"
    data = summary.get("fallback") or f"{len(train)} self-distillation traces (seed 21)"
    train_sum = {**trainer.summary(), "data": f"{data}; init {a.init}"}
    path = write_adapter(out / "adapter" / f"{a.adapter_name}.safetensors", trainer.adapter_file(name), table,
                         extra={"training": train_sum, "threshold_fit": fit_rec})
    save(out / "adapter" / f"{a.adapter_name}.history.json", trainer.history)
    summary["training"] = train_sum
    log(f"retrain: {trainer.step} steps in {trainer.seconds:.0f}s; adapter written to {path}")
    del trainer, loaded
    return path


def copy_items(tok, n, filler):
    from budgetllm.dms.data import chat_ids, make_tasks

    items = []
    for t in make_tasks(n, seed=95, kinds=("passage_copy",), filler=filler, sentences=3):
        full, prefix = chat_ids(tok, t, with_answer=True), chat_ids(tok, t)
        if full[: len(prefix)] == prefix and len(full) > len(prefix):
            items.append((full, list(range(len(prefix), len(full)))))
    return items


def stage_compare(a, out, adapters, traces, split, res, path):
    from budgetllm.dms import compare
    from budgetllm.dms.data import make_tasks, task_text_ids
    from budgetllm.models import load_model

    deadline = T0 + a.budget_s * a.compare_until
    models = {k: load_model(a.model, device=a.device, adapter=p, progress=False) for k, p in adapters.items()}
    tok = next(iter(models.values())).tokenizer
    held = [t for i in split["eval"] for t in traces[i]["ids"]] if traces else []
    if len(held) < max(a.lengths) * a.eval_rows:  # not enough held-out traces: seed-92 task texts added
        held += [t for s in task_text_ids(tok, make_tasks(12 * a.eval_rows, seed=92, pairs=70, filler=140)) for t in s]
        res["held_out"] = "held-out traces, then task texts of seed 92 (never trained on or fitted)"
    items = copy_items(tok, a.n_copy, a.copy_filler)
    res["copy_items"] = {"n": len(items), "mean_tokens": round(sum(len(f) for f, _ in items) / max(1, len(items)))}
    for ratio in a.ratios:
        for L in a.lengths:
            rows = [held[i * L:(i + 1) * L] for i in range(a.eval_rows)]
            for name, m in models.items():
                log(f"compare: {name}, {L} tokens, CR {ratio:g}")
                cells = [compare.score_rows(m, rows[i:i + a.eval_batch], compare.second_half(rows[i:i + a.eval_batch]),
                                            ratio, stride=a.stride, deadline=deadline, log=log)
                         for i in range(0, len(rows), a.eval_batch) if time.time() < deadline]
                if cells:
                    res["text"].setdefault(f"{ratio:g}", {}).setdefault(str(L), {})[name] = compare.merge(cells)
                save(path, res)
        for name, m in models.items():
            cells = [compare.score_rows(m, [f for f, _ in items[i:i + 4]], compare.answer_positions(items[i:i + 4]),
                                        ratio, stride=a.stride, deadline=deadline, answers=True, log=log)
                     for i in range(0, len(items), 4) if time.time() < deadline]
            if cells:
                res["copy"].setdefault(f"{ratio:g}", {})[name] = compare.merge(cells)
            save(path, res)
    del models


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/dms_long")
    ap.add_argument("--work", default=None, help="traces.jsonl goes here (default: --out); megabytes, not for git")
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct and its adapter")
    ap.add_argument("--shipped", default=None, help="the adapter to compare against (default: the model's own)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="paged" if torch.cuda.is_available() else "reference",
                    choices=["paged", "reference"], help="the engine that writes the traces (paged: CUDA only)")
    ap.add_argument("--budget-s", type=float, default=430, help="wall-clock budget of the whole run")
    ap.add_argument("--traces-until", type=float, default=0.2, help="no new trace starts after this budget share")
    ap.add_argument("--train-until", type=float, default=0.55)
    ap.add_argument("--compare-until", type=float, default=0.78)
    ap.add_argument("--n-traces", type=int, default=256)
    ap.add_argument("--trace-max-tokens", type=int, default=1024, help="generated tokens per trace")
    ap.add_argument("--min-trace-tokens", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--short-prompts", action="store_true", help="small task bodies (tiny CPU checks)")
    ap.add_argument("--init", choices=("shipped", "scratch"), default="shipped")
    ap.add_argument("--steps", type=int, default=400, help="upper bound; the deadline usually ends training")
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--fit-rows", type=int, default=4)
    ap.add_argument("--adapter-name", default="smollm2-135m-instruct-dms")
    ap.add_argument("--lengths", default="4096,8192")
    ap.add_argument("--ratios", default="8,4")
    ap.add_argument("--eval-rows", type=int, default=4)
    ap.add_argument("--eval-batch", type=int, default=2)
    ap.add_argument("--n-copy", type=int, default=12)
    ap.add_argument("--copy-filler", type=int, default=500, help="filler sentences between passage and request")
    ap.add_argument("--stride", type=int, default=64, help="TOVA/H2O/random evict every N tokens")
    ap.add_argument("--quality-out", default=None, help="write the shipped adapter's quality table here")
    ap.add_argument("--quality-args", default="", help="extra args for the quality table (e.g. '--n-text 1')")
    a = ap.parse_args(argv)
    a.lengths = [int(x) for x in a.lengths.split(",")]
    a.ratios = [float(x) for x in a.ratios.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": " ".join(sys.argv), "budget_s": a.budget_s}
    traces, split, summary["traces"] = stage_traces(a, out)
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    new = stage_retrain(a, out, traces, split, summary)
    gc.collect()
    path = out / f"dms_long_compare_{card(a.device)}.json"
    res = {"written_by": "bench/retrofit_long_traces.py (budgetllm.dms.compare), nothing edited by hand",
           "shipped": str(a.shipped or "the model's own adapter"), "retrained": str(new), "run": summary,
           "held_out": "self-distillation traces held out by index (i % 8 == 0), never trained on or fitted",
           "baselines_at": "each adapter's kept budget per row", "stride": a.stride, "text": {}, "copy": {}}
    stage_compare(a, out, {"shipped": a.shipped, "retrained": new}, traces, split, res, path)
    from budgetllm.dms.compare import recommend

    res["recommendation"] = recommend(res, lengths=tuple(str(x) for x in a.lengths))
    res["recommendation"]["then"] = (f"cp {new} {new.with_suffix('.json')} budgetllm/data/adapters/"
                                     if res["recommendation"]["adopt"] else "keep the shipped adapter")
    res["seconds"] = round(time.time() - T0, 1)
    save(path, res)
    log(f"compare written to {path}; adopt retrained: {res['recommendation']['adopt']}")
    if a.quality_out:
        from budgetllm.benchmarks import quality

        qargv = ["--out", a.quality_out, "--device", a.device, *a.quality_args.split()]
        if a.model:
            qargv += ["--model", a.model]
        qargv += ["--deadline-s", str(max(30.0, T0 + a.budget_s - time.time()))]
        quality.main(qargv)
    log("done")


if __name__ == "__main__":
    main()
