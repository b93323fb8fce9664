"""Issue 13 in ONE GPU call: every target measured side by side on one card with one measured
bandwidth, each point at least twice (interleaved), parts time-boxed (a part that would start with
too little time left is listed under "skipped"), then the JSON, the plot and summary.json's lines.

    python3 bench/issue13.py --out "$OUT" --budget 455 [--parts replay,b1,...]   # <= 8.5 min, one H200

(a) batch 1: Qwen2.5-1.5B 1K / 32K (CR 1, CR 8), bytes / bandwidth from the graph replay
    (bench/decode_floor.py's steps, the engine's own path) and the engine step (PagedBackend loop);
    SmolLM2-135M (the embedded GGUF, else its random shape: said in "smollm2") engine tok/s;
    per-kernel bandwidth profile of both 1K steps (bench/profile_decode.py: kernel_profile);
(b) 32K / batch 16, CR 8 vs CR 1; (c) batch 32 and 64 at 8K: bytes / bandwidth;
(d) HF generate, static cache (compiled when torch.compile fits, in a child process under a timeout:
    else uncompiled, and named so) vs paged CR 8 at batch 1 / 1K and batch 16 / 8K;
(e) long generations (budgetllm/benchmarks/long_generation.py): 256-token prompt, --long-tokens
    generated, batch 16 and 64, CR 1 vs CR 8 against the ratio the bytes allow;
(f) never slower (min CR 8 / CR 1 over the points) and paged CR 1 / the CUDA-graphed dense step.
Lines: bench/issue13_lines.py (counting rule: the median of each point's runs). Plot: issue13_plot.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.decode_floor import steps_part  # noqa: E402  (also registers the smollm2-135m shape)
from bench.decode_floor_attention import T0  # noqa: E402  (steps_part's clock)
from bench.hf_static import run_child  # noqa: E402
from bench.issue13_lines import COUNTING, EARLIER, LARGE, TimeBox, lines13, rewrite_summary  # noqa: E402
from bench.profile_decode import kernel_profile, shape_of  # noqa: E402
from budgetllm.benchmarks.baselines import GraphedDenseStep, measured_bandwidth, weight_bytes  # noqa: E402
from budgetllm.benchmarks.engine_bench import BENCH_WINDOW, run_batch  # noqa: E402
from budgetllm.benchmarks.matrix import _collect, paged_backend, tokens_to_decode  # noqa: E402
from budgetllm.models.testing import random_model  # noqa: E402

Q = "qwen2.5-1.5b"
PARTS = ("replay", "smollm2", "b1", "equal", "hf_pair", "large", "long", "dense", "profile", "hf")
ENGINE_PARTS = ("b1", "equal", "hf_pair", "large", "long", "dense")  # on the one 1.5B engine
B1 = [(1024, 1, 1), (1024, 1, 8), (32768, 1, 1), (32768, 1, 8)]
EQUAL = [(32768, 16, 1), (32768, 16, 8)]
HF_POINTS = [(1024, 1), (8192, 16)]
HF_PAIR = [(8192, 16, 1), (8192, 16, 8)]  # batch 1 / 1K CR 8 is in B1
LARGE_PTS = [(ctx, b, cr) for b, ctx in LARGE for cr in (1, 8)]
DENSE = [(1024, 1), (32768, 1), (32768, 16), (8192, 16)] + [(ctx, b) for b, ctx in LARGE]


def engine_runs(res: dict, box: TimeBox, bw: float, name: str, backend, loaded, shape: str, points,
                reps: int = 2, new_tokens: int = 48) -> None:
    """``reps`` runs of each (context, batch, CR) point on the engine (``run_batch``: the backend's own
    loop), interleaved (every point, then every point again), appended to ``res["engine"]`` with the
    bytes a step reads and their fraction of ``bw``; points past the time box go to ``res["skipped"]``."""
    wb = weight_bytes(loaded.hf_model)
    todo = [(rep, p) for rep in range(reps) for p in points]
    for rep, (ctx, batch, cr) in tqdm(todo, desc=name):
        if box.left() < 15:
            res["skipped"].append({"engine": shape, "context": ctx, "batch": batch, "compression": cr,
                                   "rep": rep, "why": "under 15 s left"})
            continue
        r = run_batch(backend, loaded, batch, ctx, tokens_to_decode(new_tokens, batch, ctx), cr, window=backend.window)
        row = asdict(r) | {"shape": shape, "part": name, "rep": rep, "weight_bytes": wb}
        row["bw_fraction"] = (wb + r.kv_read_per_step) / (r.step_ms / 1000) / bw
        res["engine"].append(row)
        tqdm.write(json.dumps({k: row[k] for k in ("part", "context", "batch", "compression", "rep", "step_ms",
                                                   "decode_tok_s", "bw_fraction", "full_batch_steps")}))


class Run:
    def __init__(self, a):
        self.a = a
        self.box = TimeBox(a.budget)
        card = torch.cuda.get_device_name(0)
        commit = Path(ROOT, ".gpu-commit").read_text().strip() if Path(ROOT, ".gpu-commit").exists() else "unknown"
        self.slug = card.lower().replace(" ", "-")
        self.path = Path(a.out) / f"issue13-{self.slug}.json"
        self.res = {"card": card, "commit": commit, "file": f"bench/results/{self.path.name}",
                    "torch": torch.__version__, "triton": triton.__version__, "budget_s": a.budget,
                    "argv": sys.argv[1:], "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "steps": [], "profile": {}, "engine": [], "graphed_dense": [], "long_generation": [],
                    "hf_static": {}, "skipped": self.box.skipped, "parts": self.box.parts, "errors": [],
                    "counting": COUNTING}
        self.smollm2 = None
        self.q = self.backend = None
        self.to_profile: list = []
        self.build_tried = False

    def save(self) -> None:
        """The JSON, its target lines and summary.json, after every part: a run cut by the call's
        limit still leaves consistent files (the plot is drawn at the end)."""
        self.res["seconds"] = round(time.monotonic() - (self.box.end - self.a.budget), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if "bandwidth_bytes_s" in self.res:
            try:
                self.res["targets"] = lines13(self.res)
                summary = json.loads(Path(self.a.summary).read_text()) if Path(self.a.summary).exists() else {}
                new = rewrite_summary(summary or {"targets": []}, self.res["targets"], EARLIER)
                Path(self.a.out, "summary.json").write_text(json.dumps(new, indent=1))
            except Exception as e:  # noqa: BLE001 - the raw numbers are still written below
                self.res["lines_error"] = repr(e)
        self.path.write_text(json.dumps(self.res, indent=1, default=str))

    def part(self, name: str, est: float, fn) -> None:
        print(f"== {name} (~{est:.0f} s; {self.box.left():.0f} s left)", flush=True)
        self.box.run(name, est, fn, self.res["errors"])
        self.save()

    # -- models --------------------------------------------------------------------------
    def load(self, shape: str):
        if shape == Q:
            self.q = self.q if self.q is not None else random_model(Q)
            return self.q
        if shape != "smollm2-135m":
            return random_model(shape)
        if self.smollm2 is None:
            try:
                from budgetllm.models import load_model

                self.smollm2 = load_model(None, device="cuda", dtype=torch.bfloat16, progress=False)
                self.res["smollm2"] = "the embedded SmolLM2-135M GGUF (real weights, its trained DMS adapter)"
            except Exception as e:  # noqa: BLE001 - the embedded package may be absent on the GPU machine
                self.smollm2 = random_model("smollm2-135m")
                self.res["smollm2"] = f"random weights of the SmolLM2-135M shape (the embedded model did not load: {e!r})"[:300]
        return self.smollm2

    # -- parts ---------------------------------------------------------------------------
    def bandwidth(self) -> None:
        self.bw = self.res["bandwidth_bytes_s"] = measured_bandwidth()
        print(f"bandwidth {self.bw / 1e12:.3f} TB/s", flush=True)

    def replay(self, est: float) -> None:
        plan = ((Q, [(1, 1024, 1)]), ("smollm2-135m", [(1, 1024, 1)]), (Q, [(1, 32768, 1), (1, 32768, 8)]))

        def hook(runner, rows, point, loaded, variant):  # keep the 1K runners (small) for the profile part
            if point["context"] == 1024 and point["batch"] == 1:
                self.to_profile.append((point["shape"], runner, rows, shape_of(loaded.hf_model.config)))

        steps_part(self.bw, time.perf_counter() - T0 + est, self.res["steps"], {}, plan, variants=("engine",),
                   load=self.load, on_point=hook)
        got = {(p["shape"], p["batch"], p["context"], p["compression"]) for p in self.res["steps"]}
        self.res["skipped"] += [{"steps": s, "batch": b, "context": c, "compression": cr, "why": "time box"}
                                for s, pts in plan for b, c, cr in pts if (s, b, c, cr) not in got]

    def profile(self) -> None:
        """Per-kernel bandwidth of the 1K batch-1 steps kept from the replay part: the eager step
        first, the JSON saved, then the graph replay (profiling inside graphs is the riskier call)."""
        for shape, runner, rows, shp in self.to_profile:
            for mode in ("eager", "graph"):
                prof = kernel_profile(runner, rows, self.bw, shp, modes=(mode,))
                self.res["profile"].setdefault(shape, {"context": 1024, "batch": 1}).update(prof)
                self.save()
        self.drop_runners()

    def drop_runners(self) -> None:
        for _, runner, _, _ in self.to_profile:
            runner.close()
        self.to_profile.clear()
        gc.collect()
        torch.cuda.empty_cache()

    def engine(self, name, backend, loaded, shape, points, reps: int = 2) -> None:
        engine_runs(self.res, self.box, self.bw, name, backend, loaded, shape, points, reps)

    def smollm2_engine(self) -> None:
        loaded = self.load("smollm2-135m")
        backend = paged_backend(loaded, max_seqs=4, num_pages=200_000, window=BENCH_WINDOW)
        try:
            self.engine("smollm2", backend, loaded, "smollm2-135m", [(1024, 1, 1)], reps=3)
        finally:
            backend.close()
            _collect()

    def build(self) -> None:
        self.load(Q)
        cfg = self.q.hf_model.config
        rows = cfg.num_hidden_layers * cfg.num_key_value_heads
        need = max(b * rows * (-(-(c + tokens_to_decode(48, b, c) + 64) // 16) + 1)
                   for c, b, _ in EQUAL + LARGE_PTS)
        self.backend = paged_backend(self.q, max_seqs=max(b for _, b, _ in LARGE_PTS) + 4, num_pages=int(need * 1.1))
        self.res["pool_pages"] = int(need * 1.1)

    def long(self) -> None:
        from budgetllm.benchmarks.long_generation import bench_long_generation

        bench_long_generation(self.box, self.res, Q, batches=(16, 64), new_tokens=self.a.long_tokens, repeats=2,
                              loaded=self.q, backend=self.backend, min_left_s=20)

    def dense(self) -> None:
        for ctx, batch in tqdm(DENSE, desc="graphed dense"):
            if self.box.left() < 15:
                self.res["skipped"].append({"graphed_dense": Q, "context": ctx, "batch": batch, "why": "under 15 s left"})
                continue
            step = GraphedDenseStep(self.q.hf_model, batch, ctx)
            for rep in range(2):
                ms = step.time_step_ms()
                self.res["graphed_dense"].append({"shape": Q, "context": ctx, "batch": batch, "rep": rep, "step_ms": ms,
                                                  "tok_s": batch * 1000 / ms})
            del step
            torch.cuda.empty_cache()

    def close(self) -> None:
        self.drop_runners()
        if self.backend is not None:
            self.backend.close()
        self.backend = self.q = None
        gc.collect()
        _collect()

    def hf(self) -> None:
        """HF static cache in a child process (its own CUDA context, killed at its timeout)."""
        out = self.res["hf_static"]
        pts = ",".join(f"{c}x{b}" for c, b in HF_POINTS)
        for compile_ in (True, False):
            have = {(p["context"], p["batch"]) for p in out.get("points", [])}
            if len(have) == len(HF_POINTS):
                break
            limit = self.box.left() - (45 if compile_ else 5)  # compiled: leave the uncompiled fallback ~40 s
            key = "compiled_child" if compile_ else "uncompiled_child"
            if limit < 30:
                self.res["skipped"].append({"hf_static": key, "why": f"{limit:.0f} s left for it"})
                continue
            t = time.monotonic()
            rc, got, tail = run_child(Path(self.a.out), key, pts, compile_, limit)
            new = [p for p in got["points"] if (p["context"], p["batch"]) not in have]
            out.setdefault("points", []).extend(new)
            out[key] = {"rc": rc, "seconds": round(time.monotonic() - t, 1), "points": len(new), "tail": tail}
            print(key, rc, [(p["context"], p["batch"], round(p["tok_s"], 1), p["compiled"]) for p in new], flush=True)
        done = {(p["context"], p["batch"]): p["compiled"] for p in out.get("points", [])}
        out["how"] = "; ".join(f"{b} / {c // 1024}K {'compiled' if v else 'NOT compiled'}" for (c, b), v in done.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--budget", type=float, default=455, help="seconds for all parts (the call's limit minus ~50 s)")
    ap.add_argument("--long-tokens", type=int, default=2048, help="tokens generated per long-generation request")
    ap.add_argument("--summary", default=str(ROOT / "bench/results/summary.json"), help="summary.json to update")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"a subset of {','.join(PARTS)} (a fix round)")
    a = ap.parse_args()
    run = Run(a)
    r = run.res
    want = set(a.parts.split(","))
    run.part("bandwidth", 5, run.bandwidth)
    if "bandwidth_bytes_s" not in r:
        raise SystemExit("no bandwidth measured")
    plan = [("replay", "a: batch-1 graph replay", 100, lambda: run.replay(100)),
            ("smollm2", "a: SmolLM2 engine step", 25, run.smollm2_engine),
            ("b1", "a: batch-1 engine steps", 15, lambda: run.engine("b1", run.backend, run.q, Q, B1)),
            ("equal", "b: equal batch 32K / 16", 30, lambda: run.engine("equal", run.backend, run.q, Q, EQUAL)),
            ("hf_pair", "d: paged side of the HF pair", 8, lambda: run.engine("hf_pair", run.backend, run.q, Q, HF_PAIR)),
            ("large", "c: large batch", 35, lambda: run.engine("large", run.backend, run.q, Q, LARGE_PTS)),
            ("long", "e: long generations", 60, run.long),
            ("dense", "f: graphed dense step", 20, run.dense),
            ("profile", "per-kernel profile of the batch-1 steps", 15, run.profile)]
    for key, name, est, fn in plan:
        if key not in want:
            r["skipped"].append({"part": name, "why": "not requested (--parts)"})
            continue
        if key in ENGINE_PARTS and not run.build_tried:  # once, before the first part that needs it
            run.build_tried = True
            run.part("build the 1.5B engine", 30, run.build)
        if key in ENGINE_PARTS and run.backend is None:
            r["skipped"].append({"part": name, "why": "the 1.5B engine did not build (see errors / skipped)"})
            continue
        run.part(name, est, fn)
    run.close()
    if "hf" in want:
        run.part("d: HF static cache (child process)", 40, run.hf)
    else:
        r["skipped"].append({"part": "d: HF static cache", "why": "not requested (--parts)"})
    try:
        from bench.issue13_plot import plot

        plot(r, Path(a.out) / f"issue13-{run.slug}.png")
    except Exception as e:  # noqa: BLE001 - the numbers are written already
        r["errors"].append({"part": "plot", "error": repr(e)})
    run.save()
    for t in r["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (goal {t['goal']})")
    print(json.dumps({"card": r["card"], "commit": r["commit"], "seconds": r["seconds"], "skipped": r["skipped"],
                      "errors": r["errors"]}))


if __name__ == "__main__":
    main()
