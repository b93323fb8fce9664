"""Quality of DMS against training-free eviction at the same kept-token budget (budgetllm eval).

    budgetllm eval --out bench/results [--heldout heldout_stream.json] [--n-tasks 24]
    (or: python -m budgetllm.benchmarks.quality ...; both work from an installed package)

For each requested ratio (2, 4, 8) the DMS run sets the budget: every sequence's baseline keeps as
many entries per (layer, KV head) row as DMS kept at its last token. Metrics: next-token KL to the
dense model and greedy agreement on the second half of held-out generated text; exact-match task
accuracy (teacher-forced greedy answer) on variable tracking and key-value retrieval, and on
passage copying (repeat a made-up passage seen ~600 tokens earlier: the dense model gets it right,
so this one ranks the methods). All evaluation text comes from seeds 92-94, which neither training
(seed + 11, + 12) nor threshold fitting (``budgetllm calibrate-thresholds``: seed 7001) uses; the
result records where the model's threshold table came from.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

METHODS = ("dms", "window", "tova", "h2o", "random")


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _recall_items(tok, n, seed=93, kinds=("variable_tracking", "kv_retrieval")):
    from budgetllm.dms.data import chat_ids, make_tasks

    items = []
    for t in make_tasks(n, seed=seed, kinds=kinds, pairs=120, filler=250 if "kv_retrieval" in kinds else 120,
                        hops=3):
        full, prefix = chat_ids(tok, t, with_answer=True), chat_ids(tok, t)
        if full[: len(prefix)] != prefix or len(full) == len(prefix):
            continue
        items.append((full, list(range(len(prefix), len(full))), t.kind))
    return sorted(items, key=lambda x: len(x[0]))


def _run_set(loaded, rows, sel_fn, ratios, methods, deadline, log, answers=None, stride=1):
    """rows: list of token lists (right-padded per batch). Returns {method: {ratio: metrics}}."""
    from budgetllm.dms.quality import (
        baseline_caps,
        exact_answers,
        kl_and_agreement,
        pad_rows,
        policy_forward,
        ratio_threshold,
    )

    pad = loaded.tokenizer.eos_token_id or 0
    acc: dict = {}
    for bi, batch in enumerate(_batches(rows, 8)):
        ids, lens = pad_rows(batch, pad)
        sel = sel_fn(batch, ids.shape[1])
        dense, _ = policy_forward(loaded, ids, "dense", sel=sel)
        tgt = ids.roll(-1, dims=1)[sel].to(dense.device)
        for r in ratios:
            dms_logits, kept = policy_forward(loaded, ids, "dms", threshold=ratio_threshold(loaded, r), sel=sel)
            cap = baseline_caps(kept, lens)
            for m in methods:
                if deadline and time.time() > deadline:
                    log(f"deadline: skipping {m} at CR {r}")
                    continue
                t0 = time.time()
                logits = dms_logits if m == "dms" else policy_forward(loaded, ids, m, cap=cap, sel=sel, seed=bi,
                                                                    stride=stride)[0]
                kl, agree = kl_and_agreement(dense, logits)
                rec = acc.setdefault(m, {}).setdefault(f"{float(r):g}", {"kl": [], "agree": [], "compression": [], "correct": []})
                rec["kl"].append((kl, int(sel.sum())))
                rec["agree"].append((agree, int(sel.sum())))
                rec["compression"] += (lens.float() / (cap + 1).float()).tolist()
                if answers is not None:
                    rec["correct"] += exact_answers(logits, tgt, sel)
                    rec.setdefault("tokens", []).extend((logits.argmax(-1) == tgt).tolist())
                log(f"batch {bi} CR {r} {m}: kl {kl:.4f} agree {agree:.3f} ({time.time() - t0:.1f}s)")
        if answers is not None:
            d = acc.setdefault("dense", {}).setdefault("1", {"correct": [], "tokens": []})
            d["correct"] += exact_answers(dense, tgt, sel)
            d["tokens"] += (dense.argmax(-1) == tgt).tolist()
    out = {}
    for m, per in acc.items():
        for r, rec in per.items():
            w = lambda xs: sum(a * n for a, n in xs) / max(1, sum(n for _, n in xs))  # noqa: E731
            res = {}
            if rec.get("kl"):
                res = {"kl": round(w(rec["kl"]), 5), "greedy_agreement": round(w(rec["agree"]), 4),
                       "compression": round(sum(rec["compression"]) / len(rec["compression"]), 3)}
            if rec.get("correct"):
                res["accuracy"] = round(sum(rec["correct"]) / len(rec["correct"]), 4)
                res["n"] = len(rec["correct"])
                res["token_accuracy"] = round(sum(rec["tokens"]) / max(1, len(rec["tokens"])), 4)
            out.setdefault(m, {})[r] = res
    return out


def run_quality(loaded, *, n_text=8, n_tasks=24, text_len=2048, ratios=(2, 4, 8), methods=METHODS,
                held_stream=None, deadline=None, log=print, stride=16, n_copy=8) -> dict:
    from budgetllm.dms.data import make_tasks, task_text_ids

    tok = loaded.tokenizer
    if held_stream is None:
        held_stream = [t for s in task_text_ids(tok, make_tasks(4 * n_text, seed=92, pairs=70, filler=140)) for t in s]
    texts = [held_stream[i * text_len:(i + 1) * text_len] for i in range(min(n_text, len(held_stream) // text_len))]

    def second_half(batch, T):
        sel = torch.zeros(len(batch), T, dtype=torch.bool)
        for i, r in enumerate(batch):
            sel[i, len(r) // 2: len(r) - 1] = True
        return sel

    items = _recall_items(tok, n_tasks)
    copies = _recall_items(tok, n_copy, seed=94, kinds=("passage_copy",))

    def answer_sel(batch, T):
        sel = torch.zeros(len(batch), T, dtype=torch.bool)
        for i, r in enumerate(batch):
            pos = next(p for (full, p, _) in items + copies if full == r)
            sel[i, [p - 1 for p in pos]] = True
        return sel

    t0 = time.time()
    from budgetllm.dms.thresholds import table_to_json

    res = {"model": loaded.name, "window": loaded.dms.window, "threshold_table": table_to_json(loaded.dms.threshold_table),
           "device": torch.cuda.get_device_name() if loaded.device.type == "cuda" else "cpu",
           "text": {"sequences": len(texts), "tokens": text_len, "metrics": {}},
           "tasks": {"n": len(items), "mean_tokens": round(sum(len(x[0]) for x in items) / max(1, len(items))),
                     "metrics": {}}}
    res["stride"] = stride
    res["provenance"] = {"written_by": "budgetllm.benchmarks.quality.run_quality (budgetllm eval), nothing edited by hand",
                         "evaluation_seeds": {"text": 92, "recall_tasks": 93, "passage_copy": 94},
                         "threshold_fit": loaded.dms.threshold_fit or "no record (a table written before fits were recorded)"}
    res["copy"] = {"n": len(copies), "mean_tokens": round(sum(len(x[0]) for x in copies) / max(1, len(copies))),
                   "metrics": {}}
    res["text"]["metrics"] = _run_set(loaded, texts, second_half, ratios, methods, deadline, log, stride=stride)
    res["tasks"]["metrics"] = _run_set(loaded, [x[0] for x in items], answer_sel, ratios, methods, deadline, log,
                                       answers=True, stride=stride)
    if copies:
        res["copy"]["metrics"] = _run_set(loaded, [x[0] for x in copies], answer_sel, ratios, methods, deadline, log,
                                          answers=True, stride=stride)
        accs = {f"{m}@{r}": v["accuracy"] for m, per in res["copy"]["metrics"].items() for r, v in per.items()
                if m in ("dense", "dms") and "accuracy" in v}
        res["copy"]["ranks_compression"] = {"accuracies": accs, "non_flat": len(set(accs.values())) > 1}
    res["seconds"] = round(time.time() - t0, 1)
    return res


def plot_quality(res: dict, path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(1, 5, figsize=(22, 3.8))
    panels = [("text", "kl", "next-token KL to dense (text)"), ("text", "greedy_agreement", "greedy agreement (text)"),
              ("tasks", "kl", "KL to dense at recall answers"), ("tasks", "accuracy", "recall-task accuracy"),
              ("copy", "token_accuracy", "passage-copy token accuracy")]
    for a, (part, key, title) in zip(ax, panels, strict=True):
        for m, per in res.get(part, {}).get("metrics", {}).items():
            if m == "dense":
                if key in ("accuracy", "token_accuracy"):
                    a.axhline(per["1"].get(key, 0), color="k", ls="--", label="dense")
                continue
            ks = sorted((r for r in per if key in per[r]), key=float)
            a.plot([float(r) for r in ks], [per[r][key] for r in ks], "o-", label=m)
        a.set_xscale("log", base=2)
        a.set_xlabel("requested CR (baselines at DMS's kept budget)")
        a.set_title(title)
        a.legend(fontsize=8)
    fig.suptitle(f"{res['model']}: DMS vs training-free eviction, window {res['window']} ({res['device']})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--model", default=None)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--heldout", default=None, help="JSON list of token ids (held-out generated text)")
    ap.add_argument("--n-text", type=int, default=4)
    ap.add_argument("--n-tasks", type=int, default=16)
    ap.add_argument("--n-copy", type=int, default=8, help="passage-copy items (the task dense SmolLM2 solves)")
    ap.add_argument("--text-len", type=int, default=2048)
    ap.add_argument("--ratios", default="2,4,8")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--device", default=None)
    ap.add_argument("--stride", type=int, default=16, help="baselines evict every N tokens (1: per token)")
    ap.add_argument("--deadline-s", type=float, default=None, help="skip what is left after this many seconds "
                    "(the result lists what was skipped)")
    a = ap.parse_args(argv)
    t_start = time.time()
    skipped: list[str] = []

    def log(msg):
        if msg.startswith("deadline"):
            skipped.append(msg)
        print(msg, flush=True)

    from budgetllm.models import load_model

    loaded = load_model(a.model, device=a.device, adapter=a.adapter, progress=False)
    held = json.loads(Path(a.heldout).read_text()) if a.heldout else None
    res = run_quality(loaded, n_text=a.n_text, n_tasks=a.n_tasks, text_len=a.text_len,
                      ratios=tuple(float(x) for x in a.ratios.split(",")), methods=tuple(a.methods.split(",")),
                      held_stream=held, stride=a.stride, n_copy=a.n_copy, log=log,
                      deadline=t_start + a.deadline_s if a.deadline_s else None)
    res["provenance"]["skipped_at_deadline"] = skipped
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    card = res["device"].replace(" ", "-").lower()
    stem = f"quality_{res['model'].split('/')[-1].lower()}_{card}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    plot_quality(res, out / f"{stem}.png")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
