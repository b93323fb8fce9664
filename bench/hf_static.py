"""HF generate with its static cache and compiled decode step vs the paged engine, side by side.

    python bench/hf_static.py --out bench/results/hf-static-h100.json
    python bench/hf_static.py --hf-only --points 1024x1,8192x16 [--no-compile] --out hf.json

(``bench/run.py --only rest`` measures the same pairs as part of the matrix.) ``--hf-only`` measures
HF alone, point after point, rewriting ``--out`` after each one: ``bench/issue13.py`` runs it as a
child process under a timeout (a torch.compile that outlasts its share of the GPU call is cut and
the points measured so far are kept), next to its own paged CR 8 points. Each point says whether
torch.compile really ran (``compiled``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from budgetllm.benchmarks.matrix import Clock, hf_static_pairs  # noqa: E402
from budgetllm.models.testing import random_model  # noqa: E402


def hf_only(points, out: Path, compile: bool, shape: str = "qwen2.5-1.5b", repeats: int = 2) -> dict:
    from budgetllm.benchmarks.baselines import hf_generate_decode_rate

    t0 = time.perf_counter()
    loaded = random_model(shape)
    res = {"card": torch.cuda.get_device_name(0), "shape": shape, "compile_requested": compile,
           "model_build_s": round(time.perf_counter() - t0, 1), "points": []}
    for ctx, batch in points:
        for rep in range(repeats):  # the second call re-uses the first one's compiled graphs
            t = time.perf_counter()
            r = hf_generate_decode_rate(loaded.hf_model, batch, ctx, new_tokens=16, static=True, compile=compile)
            res["points"].append({"context": ctx, "batch": batch, "rep": rep, **r,
                                  "seconds": round(time.perf_counter() - t, 1)})
            print(json.dumps(res["points"][-1]), flush=True)
            out.write_text(json.dumps(res, indent=1))
    return res


def run_child(out_dir: Path, key: str, points: str, compile: bool, limit: float) -> tuple:
    """``--hf-only`` in a child process of its own session, killed with its compile workers after
    ``limit`` seconds: (exit code or "killed ...", its JSON so far, the tail of its log)."""
    import os
    import signal
    import subprocess

    tmp, log = out_dir / f"hf-static-{key}.json", out_dir / f"hf-static-{key}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--hf-only", "--points", points, "--out", str(tmp)]
    with open(log, "w") as f:
        p = subprocess.Popen(cmd + ([] if compile else ["--no-compile"]), stdout=f, stderr=subprocess.STDOUT,
                             cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = f"killed at its {limit:.0f} s limit"
    got = json.loads(tmp.read_text()) if tmp.exists() else {"points": []}
    return rc, got, log.read_text()[-1500:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hf-only", action="store_true", help="HF static cache alone (no paged engine)")
    ap.add_argument("--points", default="1024x1,8192x16", help="CTXxBATCH,...")
    ap.add_argument("--no-compile", action="store_true", help="static cache with generate's auto-compile off")
    a = ap.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.hf_only:
        pts = [tuple(int(v) for v in p.split("x")) for p in a.points.split(",")]
        hf_only(pts, out, compile=not a.no_compile)
        return
    pairs = hf_static_pairs(random_model("qwen2.5-1.5b"), "qwen2.5-1.5b", Clock(3600))
    for p in pairs:
        print(p, flush=True)
    out.write_text(json.dumps({"card": torch.cuda.get_device_name(0), "pairs": pairs}, indent=1))


if __name__ == "__main__":
    main()
