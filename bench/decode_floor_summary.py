"""The decode-floor lines of summary.json (issue 13's batch-1 targets), computed from the step points
of a ``bench/decode_floor.py`` result, never typed in.

    python bench/decode_floor_summary.py bench/results/decode_floor-l5-h200.json \
        --earlier bench/results/decode_floor-h200.json

Per target: the default small-batch variant's value (``--variant``, the median of the point's runs:
that is what counts), every run of it, and the same point in ``--earlier`` (an older commit's run)
when given. Lines whose name starts with "decode floor" are replaced, every other line is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PREFIX = "decode floor"
TARGETS = (  # (shape, batch, context, compression, kind, goal)
    ("qwen2.5-1.5b", 1, 1024, 1, "bw", 0.80),
    ("qwen2.5-1.5b", 1, 32768, 8, "bw", 0.80),
    ("qwen2.5-1.5b", 1, 32768, 1, "bw", 0.80),
    ("smollm2-135m", 1, 1024, 1, "tok_s", 2500.0),
)


def _point(res: dict, shape: str, batch: int, ctx: int, cr: int) -> dict | None:
    return next((p for p in res.get("steps", []) if (p["shape"], p["batch"], p["context"], p["compression"])
                 == (shape, batch, ctx, cr)), None)


def _value(p: dict, variant: str, kind: str) -> tuple[float, list[float]] | None:
    """(value, per-run values): bytes / bandwidth of the graph replay, or engine tok/s."""
    v = p.get(variant)
    if not v:
        return None
    if kind == "bw":
        runs = [p["floor_ms"] / ms for ms in v["replay_ms_runs"]]
        return p["floor_ms"] / statistics.median(v["replay_ms_runs"]), runs
    runs = [p["batch"] * 1000 / ms for ms in v["engine_step_ms_runs"]]
    return p["batch"] * 1000 / statistics.median(v["engine_step_ms_runs"]), runs


def name_of(shape: str, batch: int, ctx: int, cr: int, kind: str) -> str:
    what = "bytes / measured bandwidth (graph replay)" if kind == "bw" else "runner step tok/s (replay + readback)"
    return f"{PREFIX}: {shape} batch {batch}, {ctx // 1024}K CR {cr}, {what}"


def lines(res: dict, run_name: str, variant: str, earlier: dict | None = None, earlier_variant: str = "gemv_pdl",
          earlier_name: str = "") -> list[dict]:
    out = []
    for shape, batch, ctx, cr, kind, goal in TARGETS:
        p = _point(res, shape, batch, ctx, cr)
        got = _value(p, variant, kind) if p else None
        if got is None:  # not measured in this run: no line
            continue
        val, runs = got
        name = name_of(shape, batch, ctx, cr, kind)
        rnd = 3 if kind == "bw" else 1
        note = (f"median of {len(runs)} runs counts; runs {', '.join(str(round(r, rnd)) for r in runs)}; "
                f"variant {variant} (the default small-batch path)")
        if earlier is not None and (q := _point(earlier, shape, batch, ctx, cr)) and (e := _value(q, earlier_variant,
                                                                                                  kind)):
            note += f"; the earlier run {earlier_name} ({earlier_variant}, older code): {round(e[0], rnd)}"
        out.append({"name": name, "goal": f">= {goal}", "measured": round(val, rnd), "met": val >= goal,
                    "note": note, "card": res.get("card"), "run": f"{run_name} (commit {res.get('commit')})"})
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("result")
    ap.add_argument("--earlier", default=None)
    ap.add_argument("--variant", default="l8_pdl")
    ap.add_argument("--summary", default="bench/results/summary.json")
    a = ap.parse_args()
    res = json.loads(Path(a.result).read_text())
    earlier = json.loads(Path(a.earlier).read_text()) if a.earlier else None
    new = lines(res, a.result, a.variant, earlier, earlier_name=a.earlier or "")
    path = Path(a.summary)
    summary = json.loads(path.read_text())
    summary["targets"] = [t for t in summary["targets"] if not t["name"].startswith(PREFIX)] + new
    path.write_text(json.dumps(summary, indent=1))
    print(json.dumps(new, indent=1))
