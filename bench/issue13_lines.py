"""Issue 13's summary lines, the time box and the plot of ``bench/issue13.py`` — the parts that need
no GPU (tested on CPU in tests/test_issue13_lines.py).

Counting rule (every line): each point runs at least twice; the MEDIAN of its runs' step times counts
(for two runs, their mean; a run disturbed by something else on the machine pulls the median less
than the mean of more runs would, and no run is dropped); every run is listed in the line's note.
"""

from __future__ import annotations

import statistics
import time

from bench.decode_floor_summary import TARGETS as REPLAY_TARGETS
from bench.decode_floor_summary import lines as replay_lines
from bench.decode_floor_summary import name_of
from budgetllm.benchmarks.long_generation import bytes_ratio

COUNTING = ("median of the runs' step times counts (each point runs >= 2 times, interleaved; the median "
            "drops no run and is pulled less than the mean by one disturbed run)")
# names of the lines this issue owns in summary.json (replaced on every run; other lines are kept)
PREFIXES = ("decode floor", "equal batch", "close to the limit", "large batch", "never slower",
            "paging costs nothing", "against users' default: paged CR 8 / HF generate (static", "long generations")
LARGE = ((32, 8192), (64, 8192))
# the run behind the lines of the old H100 matrix (summary.json's former top-level card)
EARLIER = "bench/results/bench.json (the H100 matrix of 2026-11-27, commits dcca5b9 / 2d6dc1a)"  # (batch, context) of the large-batch points


class TimeBox:
    """A wall-clock budget: a part starts only with at least its estimate left, else it is listed in
    ``skipped`` (never silently dropped). ``now``: a clock (tests pass a fake one)."""

    def __init__(self, budget_s: float, now=time.monotonic):
        self.now = now
        self.end = now() + budget_s
        self.parts: list[dict] = []
        self.skipped: list[dict] = []

    def left(self) -> float:
        return self.end - self.now()

    def run(self, name: str, est_s: float, fn, errors: list | None = None) -> bool:
        left = self.left()
        if left < est_s:
            self.skipped.append({"part": name, "why": f"{left:.0f} s left, the part needs ~{est_s:.0f} s"})
            return False
        t = self.now()
        try:
            fn()
            status = "done"
        except Exception as e:  # noqa: BLE001 - keep what the other parts measure; say what failed
            import traceback

            traceback.print_exc()
            status = f"error: {e!r}"[:300]
            if errors is not None:
                errors.append({"part": name, "error": status})
        self.parts.append({"part": name, "est_s": est_s, "seconds": round(self.now() - t, 1), "status": status})
        return status == "done"


def runs_of(res: dict, shape: str, ctx: int, batch: int, cr: float) -> list[dict]:
    return [r for r in res.get("engine", []) if (r["shape"], r["context"], r["batch"], r["compression"])
            == (shape, ctx, batch, cr)]


def med_ms(rows: list[dict]) -> float:
    return statistics.median(r["step_ms"] for r in rows)


def bw_fraction(rows: list[dict], bw: float) -> float:
    """Bytes one step reads (weights + KV) over the median step time, over the measured bandwidth."""
    nbytes = statistics.fmean(r["weight_bytes"] + r["kv_read_per_step"] for r in rows)
    return nbytes / (med_ms(rows) / 1000) / bw


def _line(res: dict, name: str, goal: float, measured, note: str, rnd: int = 3) -> dict:
    ok = measured is not None and measured >= goal
    return {"name": name, "goal": f">= {goal}", "measured": None if measured is None else round(measured, rnd),
            "met": bool(ok), "note": note, "card": res.get("card"),
            "run": f"{res.get('file', 'issue13')} (commit {res.get('commit')})"}


def _runs_note(rows: list[dict], fmt) -> str:
    return f"{COUNTING} ({len(rows)} runs: " + ", ".join(fmt(r) for r in rows) + ")"


def _ms3(r: dict) -> str:
    return f"{r['step_ms']:.3f} ms"


def _missing(res: dict, name: str, goal: float) -> dict:
    return _line(res, name, goal, None, "not measured in this run (see 'skipped' / 'errors' in the JSON)")


def lines13(res: dict) -> list[dict]:
    """Every issue-13 target line from one run's result (``bench/issue13.py``'s JSON)."""
    bw, q, out = res["bandwidth_bytes_s"], "qwen2.5-1.5b", []
    out += replay_lines(res, res.get("file", "issue13"), "engine")  # graph replay (and the runner's step)
    got = {t["name"] for t in out}
    out += [_missing(res, n, goal) for shape, batch, ctx, cr, kind, goal in REPLAY_TARGETS
            if (n := name_of(shape, batch, ctx, cr, kind)) not in got]
    for ctx, cr in ((1024, 1), (32768, 1), (32768, 8)):
        name = f"decode floor: {q} batch 1, {ctx // 1024}K CR {cr}, bytes / measured bandwidth (engine step)"
        rows = runs_of(res, q, ctx, 1, cr)
        out.append(_line(res, name, 0.80, bw_fraction(rows, bw), _runs_note(
            rows, lambda r: f"{r['step_ms']:.4f} ms") + "; PagedBackend loop (host work and readback included)")
            if rows else _missing(res, name, 0.80))
    name = "decode floor: smollm2-135m batch 1, 1K CR 1, engine tok/s (PagedBackend)"
    rows = runs_of(res, "smollm2-135m", 1024, 1, 1)
    out.append(_line(res, name, 2500.0, 1000 / med_ms(rows) if rows else None, _runs_note(
        rows, lambda r: f"{1000 / r['step_ms']:.1f}") + f"; weights: {res.get('smollm2')}", 1) if rows
        else _missing(res, name, 2500.0))
    name = "equal batch: decode tok/s CR 8 / CR 1 at 32K, batch 16"
    a, b = runs_of(res, q, 32768, 16, 8), runs_of(res, q, 32768, 16, 1)
    if a and b:
        allow = bytes_ratio(a[0]["weight_bytes"], statistics.fmean(r["kv_read_per_step"] for r in b),
                            statistics.fmean(r["kv_read_per_step"] for r in a))
        out.append(_line(res, name, 3.0, med_ms(b) / med_ms(a), f"{COUNTING} per CR; runs CR 1 " + ", ".join(
            f"{r['step_ms']:.3f}" for r in b) + " ms, CR 8 " + ", ".join(f"{r['step_ms']:.3f}" for r in a) +
            f" ms; the bytes allow {allow:.2f}x"))
    else:
        out.append(_missing(res, name, 3.0))
    for batch, ctx in LARGE:
        for cr in (1, 8):
            name = f"large batch: bytes / measured bandwidth, batch {batch}, {ctx // 1024}K CR {cr}"
            rows = runs_of(res, q, ctx, batch, cr)
            out.append(_line(res, name, 0.85, bw_fraction(rows, bw), _runs_note(
                rows, lambda r: f"{r['step_ms']:.3f} ms")) if rows else _missing(res, name, 0.85))
    out += _hf_lines(res)
    for p in res.get("long_generation", []):
        out.append(_line(res, f"long generations: CR 8 / CR 1 over the ratio the bytes allow, batch {p['batch']}",
                         0.85, p["fraction_of_bytes_ratio"],
                         f"speed-up {p['speedup']:.2f}x of {p['bytes_ratio']:.2f}x allowed; {p['counting']}; runs' "
                         f"speed-ups " + ", ".join(f"{x:.2f}" for x in p["runs_speedup"]) +
                         f"; {p['cr1']['context']}-token prompt, {p['cr1'].get('new_tokens')} generated"))
    if not res.get("long_generation"):
        out.append(_missing(res, "long generations: CR 8 / CR 1 over the ratio the bytes allow", 0.85))
    out.append(_never_slower(res))
    out.append(_paging(res))
    return out


def _hf_lines(res: dict) -> list[dict]:
    out = []
    hf = res.get("hf_static") or {}
    pts = hf.get("points", [])
    for ctx, batch in sorted({(p["context"], p["batch"]) for p in pts}):
        runs = [p for p in pts if (p["context"], p["batch"]) == (ctx, batch)]
        paged = runs_of(res, "qwen2.5-1.5b", ctx, batch, 8)
        how = "compiled" if all(p.get("compiled") for p in runs) else "NOT compiled: generate's static cache run eagerly"
        name = f"against users' default: paged CR 8 / HF generate (static cache, {how}), batch {batch} / {ctx // 1024}K"
        if not paged:
            out.append(_missing(res, name, 5.0))
            continue
        tok = batch * 1000 / med_ms(paged)
        hf_tok = batch * 1000 / med_ms(runs)
        pr, hr = _runs_note(paged, _ms3), _runs_note(runs, _ms3)
        note = (f"paged CR 8 {tok:.0f} tok/s ({pr}) vs HF {hf_tok:.1f} tok/s ({hr}; each run one timed "
                f"generate of 16 tokens after two warm-ups{'; ' + hf['how'] if hf.get('how') else ''})")
        out.append(_line(res, name, 5.0, tok / hf_tok, note, 2))
    if not out:
        out.append(_missing(res, "against users' default: paged CR 8 / HF generate (static cache)", 5.0))
    return out


def _ratios(res: dict) -> list[tuple[float, str]]:
    got = []
    keys = {(r["shape"], r["context"], r["batch"]) for r in res.get("engine", []) if r["compression"] == 8}
    for shape, ctx, batch in sorted(keys):
        a, b = runs_of(res, shape, ctx, batch, 8), runs_of(res, shape, ctx, batch, 1)
        if a and b:
            got.append((med_ms(b) / med_ms(a), f"{shape} {ctx // 1024}K batch {batch}"))
    for p in res.get("long_generation", []):
        got.append((p["speedup"], f"long generation batch {p['batch']}"))
    return got


def _never_slower(res: dict) -> dict:
    name = "never slower: min over points of CR 8 / CR 1 decode tok/s"
    got = _ratios(res)
    if not got:
        return _missing(res, name, 1.0)
    low = min(got)
    return _line(res, name, 1.0, low[0], f"{len(got)} points, each the ratio of the medians; lowest at {low[1]}; "
                 "all: " + ", ".join(f"{w} {x:.3f}" for x, w in got))


def _paging(res: dict) -> dict:
    name = "paging costs nothing: paged CR 1 / CUDA-graphed dense torch step (min)"
    got = []
    for key in sorted({(g["shape"], g["context"], g["batch"]) for g in res.get("graphed_dense", [])}):
        g = [x for x in res["graphed_dense"] if (x["shape"], x["context"], x["batch"]) == key]
        p = runs_of(res, *key, 1)
        if p:
            got.append((statistics.median(x["step_ms"] for x in g) / med_ms(p), f"{key[1] // 1024}K batch {key[2]}"))
    if not got:
        return _missing(res, name, 0.9)
    low = min(got)
    return _line(res, name, 0.9, low[0], f"ratio of the medians (graphed step ms / paged step ms), {len(got)} points; "
                 f"lowest at {low[1]}; all: " + ", ".join(f"{w} {x:.3f}" for x, w in got))


def tag_cards(summary: dict, earlier_run: str) -> dict:
    """A top-level card / bandwidth (the old matrix's) moves under ``earlier_matrix`` and every line
    without its own card gets that card and ``earlier_run``: no line is claimed for a card it was not
    run on. Idempotent (a file already tagged comes back unchanged)."""
    out = {k: v for k, v in summary.items() if k not in ("card", "bandwidth_bytes_per_s", "targets")}
    card = summary.get("card")
    if card:
        out["earlier_matrix"] = {"card": card, "bandwidth_bytes_per_s": summary.get("bandwidth_bytes_per_s"),
                                 "run": earlier_run}
    out["targets"] = [dict(t, card=card, run=t.get("run", earlier_run)) if "card" not in t and card else t
                      for t in summary.get("targets", [])]
    return out


def rewrite_summary(summary: dict, new: list[dict], earlier_run: str) -> dict:
    """:func:`tag_cards`, then issue 13's lines (names starting with ``PREFIXES``) replaced by ``new``;
    every other line kept as it was. A line this run did not measure keeps the earlier measurement
    of the same name if there is one (it names its own card and run: a ``--parts`` fix round
    does not wipe the main run's lines)."""
    out = tag_cards(summary, earlier_run)
    before = {t["name"]: t for t in out["targets"] if t.get("measured") is not None}
    new = [before.get(t["name"], t) if t.get("measured") is None else t for t in new]
    out["targets"] = [t for t in out["targets"] if not t["name"].startswith(PREFIXES)] + new
    return out
