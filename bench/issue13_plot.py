"""The plot of ``bench/issue13.py``: bytes / bandwidth per point (CR 1 vs CR 8 bars), CR 8 / CR 1
speed-ups against the ratio the bytes allow, and the per-kernel-family bandwidth of the batch-1 step."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.issue13_lines import bw_fraction, med_ms, runs_of


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bw = res["bandwidth_bytes_s"]
    fig, ax = plt.subplots(1, 3, figsize=(18, 5))
    keys = sorted({(r["shape"], r["context"], r["batch"]) for r in res.get("engine", [])},
                  key=lambda k: (k[0] != "qwen2.5-1.5b", k[2], k[1]))
    labels = [f"{'SmolLM2' if s.startswith('smol') else '1.5B'}\nb{b} {c // 1024}K" for s, c, b in keys]
    for j, cr in enumerate((1, 8)):
        vals = [bw_fraction(rows, bw) if (rows := runs_of(res, *k, cr)) else 0 for k in keys]
        ax[0].bar([i + (j - 0.5) * 0.4 for i in range(len(keys))], vals, 0.4, label=f"CR {cr} (engine step)")
    rp = [p for p in res.get("steps", []) if p.get("engine")]
    for p in rp:
        if (p["shape"], p["context"], p["batch"]) in keys:
            i = keys.index((p["shape"], p["context"], p["batch"]))
            x = i + (-0.2 if p["compression"] == 1 else 0.2)
            ax[0].plot([x], [p["floor_ms"] / statistics.median(p["engine"]["replay_ms_runs"])], "k_", ms=14)
    ax[0].axhline(0.80, ls="--", c="gray", lw=0.8)
    ax[0].axhline(0.85, ls=":", c="gray", lw=0.8)
    ax[0].set_xticks(range(len(keys)), labels, fontsize=7)
    ax[0].set_title("bytes / measured bandwidth (black ticks: graph replay)")
    ax[0].legend(fontsize=7)
    pts, sp, allow = [], [], []
    for s, c, b in keys:
        a8, a1 = runs_of(res, s, c, b, 8), runs_of(res, s, c, b, 1)
        if a8 and a1:
            pts.append(f"b{b} {c // 1024}K")
            sp.append(med_ms(a1) / med_ms(a8))
            w = a1[0]["weight_bytes"]
            allow.append((w + statistics.fmean(r["kv_read_per_step"] for r in a1)) /
                         (w + statistics.fmean(r["kv_read_per_step"] for r in a8)))
    for p in res.get("long_generation", []):
        pts.append(f"long b{p['batch']}")
        sp.append(p["speedup"])
        allow.append(p["bytes_ratio"])
    ax[1].bar(range(len(pts)), sp, 0.6, label="CR 8 / CR 1 tok/s (medians)")
    ax[1].plot(range(len(pts)), allow, "r_", ms=18, mew=2, label="the ratio the bytes allow")
    ax[1].axhline(1.0, ls="--", c="gray", lw=0.8)
    ax[1].set_xticks(range(len(pts)), pts, fontsize=7)
    ax[1].set_title("CR 8 / CR 1")
    ax[1].legend(fontsize=7)
    for j, (shape, prof) in enumerate(sorted(res.get("profile", {}).items())):
        per = (prof.get("graph") or {}).get("per_label") or (prof.get("eager") or {}).get("per_label") or {}
        labs = [k for k in per if per[k].get("bw_fraction")]
        ax[2].bar([i + (j - 0.5) * 0.4 for i in range(len(labs))], [per[k]["bw_fraction"] for k in labs], 0.4,
                  label=shape)
        ax[2].set_xticks(range(len(labs)), labs, fontsize=7, rotation=30)
    ax[2].set_title("batch-1 step at 1K: bandwidth fraction per kernel family")
    ax[2].legend(fontsize=7)
    fig.suptitle(f"issue 13 on {res['card']} (commit {res.get('commit')}, {bw / 1e12:.2f} TB/s measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
