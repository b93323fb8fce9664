"""Two DMS adapters on held-out long text, against training-free eviction at equal kept tokens.

Used by ``bench/retrofit_long_traces.py`` (the long-trace retrain) to decide whether the retrained
adapter replaces the shipped one. Per (ratio, context length, adapter): next-token KL to the dense
model and greedy agreement over the second half of each row, the achieved ratio (row length over
the entries a (layer, KV head) row keeps at the last token), and the same metrics for window /
TOVA / H2O / random given exactly the kept budget this adapter reached on that row. Passage copy:
teacher-forced exact match of a passage seen thousands of tokens earlier (dense accuracy reported
beside it). :func:`recommend` is the one rule that says whether the retrained adapter is adopted.
"""

from __future__ import annotations

import time

import torch

from budgetllm.dms.quality import (
    baseline_caps,
    exact_answers,
    kl_and_agreement,
    pad_rows,
    policy_forward,
    ratio_threshold,
)

BASELINES = ("window", "tova", "h2o", "random")


def score_rows(loaded, rows, sel, ratio, methods=("dms", *BASELINES), *, stride=64, seed=0, deadline=None,
               answers=False, log=print) -> dict:
    """rows: token lists (one batch); sel [B, T] bool marks the predicting positions.

    Returns {method: {"kl", "greedy_agreement", "compression", ["correct": [bool per row]]}}; methods
    past ``deadline`` are left out (the caller records what is missing). "dense" is added with answers.
    """
    pad = loaded.tokenizer.eos_token_id or 0
    ids, lens = pad_rows(rows, pad)
    dense, _ = policy_forward(loaded, ids, "dense", sel=sel)
    tgt = ids.roll(-1, dims=1)[sel].to(dense.device)
    dms_logits, kept = policy_forward(loaded, ids, "dms", threshold=ratio_threshold(loaded, ratio), sel=sel)
    cap = baseline_caps(kept, lens)
    achieved = (lens.float() / (cap + 1).float()).tolist()
    out = {}
    if answers:
        out["dense"] = {"correct": exact_answers(dense, tgt, sel)}
    for m in methods:
        if deadline is not None and time.time() > deadline:
            log(f"deadline: {m} at CR {ratio:g} skipped")
            continue
        t0 = time.time()
        logits = dms_logits if m == "dms" else policy_forward(loaded, ids, m, cap=cap, sel=sel, seed=seed,
                                                            stride=stride)[0]
        kl, agree = kl_and_agreement(dense, logits)
        rec = {"kl": kl, "greedy_agreement": agree, "compression": sum(achieved) / len(achieved),
               "positions": int(sel.sum())}
        if answers:
            rec["correct"] = exact_answers(logits, tgt, sel)
        out[m] = rec
        log(f"  CR {ratio:g} {m}: kl {kl:.4f} agree {agree:.3f} ratio {rec['compression']:.2f} ({time.time() - t0:.1f}s)")
    return out


def second_half(rows) -> torch.Tensor:
    T = max(len(r) for r in rows)
    sel = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        sel[i, len(r) // 2: len(r) - 1] = True
    return sel


def answer_positions(items) -> torch.Tensor:
    """items: (full ids, answer positions) -> sel marking each answer token's predecessor."""
    T = max(len(f) for f, _ in items)
    sel = torch.zeros(len(items), T, dtype=torch.bool)
    for i, (_, pos) in enumerate(items):
        sel[i, [p - 1 for p in pos]] = True
    return sel


def merge(cells: list[dict]) -> dict:
    """Batches of :func:`score_rows` -> one record per method (position-weighted KL / agreement)."""
    out: dict = {}
    for m in dict.fromkeys(k for c in cells for k in c):
        recs = [c[m] for c in cells if m in c]
        res = {}
        if "kl" in recs[0]:
            n = sum(r["positions"] for r in recs)
            res = {"kl": round(sum(r["kl"] * r["positions"] for r in recs) / n, 5),
                   "greedy_agreement": round(sum(r["greedy_agreement"] * r["positions"] for r in recs) / n, 4),
                   "compression": round(sum(r["compression"] for r in recs) / len(recs), 3), "positions": n}
        if "correct" in recs[0]:
            flat = [x for r in recs for x in r["correct"]]
            res.update(accuracy=round(sum(flat) / len(flat), 4), n=len(flat))
        out[m] = res
    return out


def recommend(result: dict, *, ratio: str = "8", lengths=("4096", "8192"), agreement_slack: float = 0.002,
              ratio_slack: float = 0.95) -> dict:
    """The adoption rule: the retrained adapter becomes the shipped one only if, at the trained ratio and on
    every held-out length, its KL to dense is lower, its greedy agreement is not lower (by more than
    ``agreement_slack``), it compresses at least ``ratio_slack`` x as much, and its passage-copy accuracy
    is not lower. Any missing cell (deadline) means: keep the shipped adapter."""
    why, ok = [], True
    text = result.get("text", {})
    for L in lengths:
        cell = text.get(ratio, {}).get(L, {})
        old, new = cell.get("shipped", {}).get("dms"), cell.get("retrained", {}).get("dms")
        if not old or not new:
            return {"adopt": False, "why": [f"CR {ratio} at {L} tokens not measured for both adapters"]}
        checks = {"kl lower": new["kl"] < old["kl"],
                  "agreement not lower": new["greedy_agreement"] >= old["greedy_agreement"] - agreement_slack,
                  "compression kept": new["compression"] >= ratio_slack * old["compression"]}
        for name, passed in checks.items():
            why.append(f"{L} tokens: {name}: {'yes' if passed else 'NO'} (shipped kl {old['kl']}, agree "
                       f"{old['greedy_agreement']}, ratio {old['compression']}; retrained kl {new['kl']}, agree "
                       f"{new['greedy_agreement']}, ratio {new['compression']})")
            ok &= passed
    copy = result.get("copy", {}).get(ratio, {})
    old, new = copy.get("shipped", {}).get("dms"), copy.get("retrained", {}).get("dms")
    if not old or not new:
        return {"adopt": False, "why": why + [f"passage copy at CR {ratio} not measured for both adapters"]}
    passed = new["accuracy"] >= old["accuracy"]
    why.append(f"passage copy accuracy not lower: {'yes' if passed else 'NO'} ({old['accuracy']} -> {new['accuracy']})")
    return {"adopt": bool(ok and passed), "why": why}
