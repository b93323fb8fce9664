"""Run the agent part of ``budgetllm bench`` and write ``agent-loop-<card>.json`` + its summary lines.

``--quick`` (~1 minute on an H200): the 8K loop (Qwen2.5-1.5B shape) in 5 turns and the 32K loop
(Qwen3-8B shape) in 4 turns with big tool results (each turn adds ~1.8K / ~10.6K tokens), HF only on
the last turn, bursts of 16 and 48 calls, the call latencies.

Full mode (~2-3 minutes): a realistic agent. Both loops run 8 turns of ``TURN_TOKENS`` each (the
previous 64-token answer, a tool call and a ~290-token tool result) up to 8K / 32K, HF on every
turn, and the embedded SmolLM2 runs the same loop to 6K (real weights) besides its call latencies.
Every turn row says how many tokens it prefilled (``prefilled_tokens``) and added (``added_tokens``).

One part alone: ``python -m budgetllm.benchmarks.agent_report --out DIR --parts loop-1.5b`` (the
8K loop with and without reuse and HF, ~40 s in full mode); it replaces only its own summary lines.
"""

from __future__ import annotations

import gc
import json
import re
import time
from pathlib import Path

import torch

from budgetllm.benchmarks.agent_loop import burst, call_latency, loop_summary, run_loop


def _backend(loaded, max_seqs: int, prefix: bool, max_context: int = 34 * 1024, memory_fraction: float = 0.5):
    from budgetllm.engine.paged.backend import PagedBackend

    return PagedBackend(loaded, max_seqs=max_seqs, max_context=max_context, max_prefill_tokens=16384,
                        memory_fraction=memory_fraction, window=256, prefix_cache=None if prefix else 0)


def _free(*objs) -> None:
    for o in objs:
        if o is not None and hasattr(o, "close"):
            o.close()
    gc.collect()
    torch.cuda.empty_cache()


TURN_TOKENS = 384  # full mode: what one agent turn adds (answer 64 + tool call 32 + tool result 288)


def agent_loops(shape: str, history: int, steps: int, results: dict, hf_every_turn: bool,
                turn_tokens: int | None = None, loaded=None, max_context: int = 34 * 1024) -> None:
    from budgetllm.models.testing import random_model

    loaded = loaded if loaded is not None else random_model(shape)
    out = {"shape": shape, "history": history, "steps": steps, "turn_tokens": turn_tokens}
    for prefix in (True, False):
        backend = _backend(loaded, 4, prefix, max_context=max_context)
        run_loop(backend, loaded, min(history, 4096), 2, seed=99)  # warm-up: kernels, graphs
        hf = loaded.hf_model if (prefix and hf_every_turn) else None
        out["reuse" if prefix else "no_reuse"] = run_loop(backend, loaded, history, steps, seed=1, hf=hf,
                                                          turn_tokens=turn_tokens)
        out["pool" if prefix else "pool_no_reuse"] = backend.pool_stats()
        _free(backend)
    if not hf_every_turn:  # HF has no reuse: its TTFT on the last (longest) prompt is enough
        last = out["reuse"]["turns"][-1]
        g = torch.Generator().manual_seed(5)
        prompt = torch.randint(100, 30000, (last["prompt_tokens"],), generator=g).tolist()
        from budgetllm.benchmarks.agent_loop import hf_ttft

        hf_ttft(loaded.hf_model, prompt[:1024])  # warm-up
        last["hf_ttft_s"] = hf_ttft(loaded.hf_model, prompt)
    out["summary"] = loop_summary(out["reuse"], out["no_reuse"])
    results["loops"].append(out)
    del loaded
    _free()


def thinking_bursts(results: dict, sizes=(16, 48), max_tokens: int = 512) -> None:
    from budgetllm.models.testing import random_model

    loaded = random_model("qwen2.5-1.5b")
    backend = _backend(loaded, max(sizes) + 2, True, max_context=4096)
    burst(backend, loaded, 4, 64, max_tokens=64)  # warm-up
    for n in sizes:
        plain = burst(backend, loaded, n, None, max_tokens=max_tokens)
        think = burst(backend, loaded, n, max_tokens * 7 // 8, max_tokens=max_tokens)
        results["bursts"].append({"calls": n, "without": plain, "with_budget": think,
                                  "ratio": think["tok_s"] / plain["tok_s"]})
    results["latency"].append({"model": "qwen2.5-1.5b (random)", **call_latency(backend, loaded),
                               "prefill_graphs": backend.pool_stats()["prefill_graphs"],
                               "prefill_graph_error": backend.pool_stats()["prefill_graph_error"]})
    _free(backend)
    del loaded
    _free()


def smollm2_latency(results: dict, loop: bool = False) -> None:
    from budgetllm.models import load_model

    try:
        loaded = load_model(None, device="cuda", dtype=torch.bfloat16, progress=False)
    except Exception as e:  # noqa: BLE001 - the embedded package is optional on the GPU machine
        results["skipped"].append({"smollm2": repr(e)})
        return
    backend = _backend(loaded, 4, True, max_context=8192)
    results["latency"].append({"model": "smollm2-135m", **call_latency(backend, loaded),
                               "prefill_graphs": backend.pool_stats()["prefill_graphs"],
                               "prefill_graph_error": backend.pool_stats()["prefill_graph_error"]})
    _free(backend)
    if loop:  # the agent loop on real weights (its context is 8K: the loop grows to 6K)
        agent_loops("smollm2-135m", 6144, 8, results, hf_every_turn=True, turn_tokens=TURN_TOKENS,
                    loaded=loaded, max_context=8192)


def targets(results: dict) -> list[dict]:
    """The agent-loop lines of docs/targets.md, for summary.json."""
    def line(name, goal, measured, met, note=""):
        return {"name": name, "goal": goal, "measured": None if measured is None else round(measured, 3),
                "met": bool(met) if measured is not None else False, **({"note": note} if note else {})}

    out = []
    for lp in results["loops"]:
        s, tag = lp["summary"], f"{lp['shape']} to {lp['history'] // 1024}K"
        out.append(line(f"agent loop: history served from the cache, turn >= 2 ({tag})", ">= 0.9",
                        s["history_served_min"], (s["history_served_min"] or 0) >= 0.9))
        per_turn = s["prefilled_tokens_per_turn"][-1] if s.get("prefilled_tokens_per_turn") else None
        out.append(line(f"agent loop: TTFT no reuse / reuse, last turn ({tag})", ">= 5x", s["ttft_speedup_last"],
                        (s["ttft_speedup_last"] or 0) >= 5,
                        (f"median over turns >= 2: {s['ttft_speedup_median']:.2f}x; last turn prefilled {per_turn} of "
                         f"{lp['reuse']['turns'][-1]['prompt_tokens']} tokens"
                         + (" (full mode: realistic turns)" if lp.get("turn_tokens") else " (quick: big turns)"))
                        if s["ttft_speedup_median"] else ""))
    for b in results["bursts"]:
        out.append(line(f"thinking burst: tok/s with budget / without, {b['calls']} calls", ">= 0.95x", b["ratio"],
                        b["ratio"] >= 0.95))
    for lat in results["latency"]:
        if lat["model"].startswith("smollm2"):
            out.append(line("TTFT of a 1K-token prompt, SmolLM2 (ms)", "<= 10", lat["ttft_1k_ms"],
                            lat["ttft_1k_ms"] <= 10))
    return out


PARTS = ("loop-1.5b", "bursts", "loop-8b", "smollm2")


def main(out_dir: str, quick: bool = False, parts: tuple | None = None) -> dict:
    """Run the agent parts (``parts``: a subset of :data:`PARTS`, default all) and write the results.
    A subset replaces only its own lines of ``summary.json``."""
    card = torch.cuda.get_device_name(0)
    results = {"card": card, "loops": [], "bursts": [], "latency": [], "skipped": [], "quick": quick}
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    turn = None if quick else TURN_TOKENS
    runs = {"loop-1.5b": lambda: agent_loops("qwen2.5-1.5b", 8192, 5 if quick else 8, results,
                                             hf_every_turn=not quick, turn_tokens=turn),
            "bursts": lambda: thinking_bursts(results, max_tokens=256 if quick else 512),
            "loop-8b": lambda: agent_loops("qwen3-8b", 32768, 4 if quick else 8, results, hf_every_turn=not quick,
                                           turn_tokens=turn),
            "smollm2": lambda: smollm2_latency(results, loop=not quick)}
    unknown = set(parts or ()) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown agent parts {sorted(unknown)}; choose from {PARTS}")
    results["parts"] = list(parts or PARTS)
    for part in (runs[p] for p in results["parts"]):  # results are written after every part: a run cut short keeps what it measured
        try:
            part()
        except Exception as e:  # noqa: BLE001 - the other parts still run; the error is recorded
            results["skipped"].append({"error": repr(e)})
            _free()
        results["seconds"] = time.perf_counter() - t0
        results["targets"] = targets(results)
        (out / f"agent-loop-{slug}.json").write_text(json.dumps(results, indent=1))
    summary_path = out / "summary.json"  # add (or replace) the agent-loop lines of the summary
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"card": card, "targets": []}
    new = {t["name"] for t in results["targets"]}
    keep = [t for t in summary.get("targets", []) if t["name"] not in new
            and (parts is not None or not t["name"].startswith(("agent loop", "thinking burst", "TTFT of")))]
    summary["targets"] = keep + [dict(t, card=card) for t in results["targets"]]
    summary_path.write_text(json.dumps(summary, indent=1))
    return results


if __name__ == "__main__":  # python -m budgetllm.benchmarks.agent_report --out DIR [--quick] [--parts loop-1.5b ...]
    import argparse

    ap = argparse.ArgumentParser(description="the agent parts of `budgetllm bench --only agent`")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", nargs="+", choices=PARTS, help="a subset of the parts (default: all)")
    args = ap.parse_args()
    for t in main(args.out, args.quick, tuple(args.parts) if args.parts else None)["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (goal {t['goal']})")
