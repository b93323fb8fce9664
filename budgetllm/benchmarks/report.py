"""From bench.json to summary.json (one entry per performance line of docs/targets.md) and plots."""

from __future__ import annotations

import json
from pathlib import Path


def _find(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def _one(rows, **kw):
    hits = _find(rows, **kw)
    return hits[0] if hits else None


def _target(name, goal, measured, met, note=""):
    return {"name": name, "goal": goal, "measured": measured, "met": bool(met) if measured is not None else False,
            **({"note": note} if note else {})}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def summarize(results: dict, shape: str = "qwen2.5-1.5b") -> dict:
    paged = [r for r in results["paged"] if r["shape"] == shape]
    bw = results["bandwidth"]
    t = []

    def pages(ctx, cr, batch=None):
        rows = _find(paged, context=ctx, compression=cr, **({"batch": batch} if batch else {}))
        rows = sorted(rows, key=lambda r: -r["batch"])
        return (rows[0]["peak_pages"] / rows[0]["batch"]) if rows and rows[0]["peak_pages"] else None

    for ctx, goal in ((32768, 7.5), (8192, 6.5)):
        m = _ratio(pages(ctx, 1), pages(ctx, 8))
        t.append(_target(f"memory: pages held dense / CR 8 at {ctx // 1024}K", f">= {goal}x", m, m and m >= goal))
    a, b = _one(paged, context=32768, batch=16, compression=8), _one(paged, context=32768, batch=16, compression=1)
    m = _ratio(a and a["decode_tok_s"], b and b["decode_tok_s"])
    t.append(_target("equal batch: decode tok/s CR 8 / CR 1 at 32K, batch 16", ">= 3x", m, m and m >= 3))
    eq = results["equal_memory"][-1] if results["equal_memory"] else None  # the latest measurement
    m = _ratio(eq and eq["cr8"]["decode_tok_s"], eq and eq["cr1"]["decode_tok_s"])
    t.append(_target("equal memory: tok/s of the larger CR 8 batch / dense in the same pool", ">= 5x", m, m and m >= 5,
                     f"pool {eq['pool_pages']} pages; dense batch {eq['dense_batch']}, CR 8 batch {eq['cr8']['batch']}" if eq else ""))
    ratios = []
    for r in _find(results["paged"], compression=8):
        d = _one(results["paged"], shape=r["shape"], context=r["context"], batch=r["batch"], compression=1)
        if d and d["decode_tok_s"]:
            ratios.append((r["decode_tok_s"] / d["decode_tok_s"], r))
    low = min(ratios, key=lambda x: x[0], default=None)
    m = round(low[0], 3) if low else None
    t.append(_target("never slower: min over points of CR 8 / CR 1 decode tok/s", ">= 1.0x", m, m and m >= 1.0,
                     f"{len(ratios)} points, every shape; lowest at {low[1]['shape']}, {low[1]['context']} ctx, "
                     f"batch {low[1]['batch']}" if low else ""))
    top = max((r["batch"] for r in paged), default=0)
    large = [r for r in paged if r["batch"] == top]
    big = max(large, key=lambda r: r["achieved_bw"], default=None)
    m = round(big["achieved_bw"] / bw, 3) if big else None
    lo = min(large, key=lambda r: r["achieved_bw"], default=None)
    t.append(_target("close to the limit: bytes moved / measured bandwidth at large batch", ">= 0.80", m, m and m >= 0.8,
                     f"best point at batch {top}: {big['context']} ctx, CR {big['compression']}; lowest at that batch "
                     f"{lo['achieved_bw'] / bw:.3f} ({lo['context']} ctx, CR {lo['compression']})" if big else ""))
    one = [r for r in paged if r["batch"] == 1]
    best = max(one, key=lambda r: r["achieved_bw"], default=None)
    m = round(best["achieved_bw"] / bw, 3) if best else None
    t.append(_target("close to the limit: at batch 1", ">= 0.50", m, m and m >= 0.5,
                     f"best point {best['context']} ctx, CR {best['compression']}; range "
                     f"{min(r['achieved_bw'] for r in one) / bw:.3f}-{m:.3f} over {len(one)} points" if best else ""))
    ratios = []
    for g in results["graphed_dense"]:
        p = _one(paged, shape=g["shape"], context=g["context"], batch=g["batch"], compression=1)
        if p:
            ratios.append(p["decode_tok_s"] / g["tok_s"])
    m = round(min(ratios), 3) if ratios else None
    t.append(_target("paging costs nothing: paged CR 1 / CUDA-graphed dense torch step (min)", ">= 0.9x", m, m and m >= 0.9))
    for key, goal, label in (("hf_generate", 20, "HF generate (dense cache)"), ("hf_static", 5, "HF generate (static cache, compiled)")):
        ratios = []
        for h in results[key]:
            p = _one(paged, shape=h["shape"], context=h["context"], batch=h["batch"], compression=8)
            if p:
                ratios.append(p["decode_tok_s"] / h["tok_s"])
        note = ""
        if key == "hf_static" and results.get("hf_static_pairs"):  # measured side by side in its own run
            ratios = [r["ratio"] for r in results["hf_static_pairs"]]
            note = "paged CR 8 and HF static measured side by side (bench/run.py --only rest)"
        m = round(min(ratios), 2) if ratios else None
        if ratios:
            note = (note + "; " if note else "") + "min over (1K, batch 1) and (8K, batch 16): " + \
                ", ".join(f"{x:.2f}" for x in ratios)
        t.append(_target(f"against users' default: paged CR 8 / {label}", f">= {goal}x", m, m and m >= goal, note))
    a, b = _one(paged, context=32768, batch=1, compression=8), _one(paged, context=32768, batch=1, compression=1)
    m = _ratio(a and a["ttft_s"], b and b["ttft_s"])
    t.append(_target("prefill: DMS prefill time / dense at 32K", "<= 1.2x", m, m is not None and m <= 1.2))
    rt = results.get("resumed_turn")
    m = _ratio(rt and rt["full_ttft_s"], rt and rt["resumed_ttft_s"])
    t.append(_target("resumed turns: TTFT of re-prefilling / TTFT reusing the compressed prefix", ">= 5x", m,
                     m and m >= 5, f"{rt['context']}-token first turn; median TTFT {1000 * rt['resumed_ttft_s']:.1f} ms "
                     f"resumed vs {1000 * rt['full_ttft_s']:.1f} ms from scratch" if rt else "not measured"))
    return {"card": results["card"], "bandwidth_bytes_per_s": bw, "targets": t}


def plot(results: dict, out_dir: str | Path, shape: str = "qwen2.5-1.5b") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paged = [r for r in results["paged"] if r["shape"] == shape]
    files = []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    top = max((r["batch"] for r in paged), default=16)
    for batch, style in ((1, "--"), (top, "-")):
        for cr in sorted({r["compression"] for r in paged}):
            rows = sorted(_find(paged, batch=batch, compression=cr), key=lambda r: r["context"])
            if len(rows) < 2:
                continue
            x = [r["context"] for r in rows]
            axes[0].plot(x, [r["decode_tok_s"] for r in rows], style, marker="o", label=f"CR {cr:g}, batch {batch}")
            axes[1].plot(x, [r["peak_pages"] * 1 for r in rows], style, marker="o", label=f"CR {cr:g}, batch {batch}")
            axes[2].plot(x, [r["achieved_bw"] / results["bandwidth"] for r in rows], style, marker="o",
                         label=f"CR {cr:g}, batch {batch}")
    titles = ("decode throughput", "KV pages held (peak)", "bytes moved / measured bandwidth")
    for ax, title, ylabel in zip(axes, titles, ("tokens/s", "pages", "fraction"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_title(f"{title} — {shape}")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    fig.suptitle(f"budgetllm paged engine on {results['card']}")
    fig.tight_layout()
    path = out_dir / "bench-throughput-memory.png"
    fig.savefig(path, dpi=110)
    files.append(path)
    return files


def merge_parts(parts: list[dict]) -> dict:
    """Parts of one matrix (``--only grid`` / ``rest`` / ``equal``, run one after the other on the
    same kind of card) -> one results dict: lists are concatenated; the first part's scalars win."""
    results = dict(parts[0])
    for part in parts[1:]:
        if part["card"] != results["card"]:
            raise ValueError(f"parts measured on different cards: {results['card']!r} and {part['card']!r}")
        for k, v in part.items():
            if isinstance(v, list):
                results[k] = results.get(k, []) + v
            elif k not in results:
                results[k] = v
    return results


def merge_lines(old: dict, card: str, lines: list[dict]) -> dict:
    """``old`` summary.json with ``lines`` (measured on ``card``) replacing the lines of the same
    name; every line names its card, so the file has no top-level card (its lines come from several
    runs and cards)."""
    new = [dict(t, card=t.get("card", card)) for t in lines]
    names = {t["name"] for t in new}
    out = {k: v for k, v in old.items() if k not in ("targets", "card", "bandwidth_bytes_per_s")}
    out["targets"] = [t for t in old.get("targets", []) if t["name"] not in names] + new
    return out


def write_report(results: dict, out_dir: str | Path) -> dict:
    summary = summarize(results)
    path = Path(out_dir, "summary.json")
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(merge_lines(old, summary["card"], summary["targets"]), indent=1))
    plot(results, out_dir)
    return summary
