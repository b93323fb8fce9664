"""CPU decode, side by side: HF ``generate`` vs the reference backend vs the CPU backend.

    python bench/cpu_decode.py --out bench/results/cpu-epyc-2core.json [--rounds 3] [--tokens 128]

The embedded SmolLM2-135M-Instruct (real weights, float32), one prompt, ``--tokens`` greedy tokens
(EOS ignored), at 1 and 2 torch threads; our backends at CR 1 and CR 8. The variants run
interleaved (every round runs each once, in a rotated order) and the medians are reported, so a
machine shared with other work slows all of them alike. Decode tok/s counts the tokens after the
first over the time after the first (prefill excluded, for HF too: a streamer stamps each token).
CPU seconds per token (process time) are recorded next to wall time: on a busy machine they say
what the work costs when it does run. HF and the reference backend read a pristine copy of the
model; the CPU backend re-points the model it runs on at its own (transposed) weight layout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

PROMPT = ("You are a careful assistant. Summarise in plain words why a ship's hull is shaped the way it "
          "is, how the shape trades speed against stability, and what sailors of the old harbour towns "
          "learned about it over the centuries.")


def _request(loaded, backend, prompt_ids, compression, tokens):
    from budgetllm.accounting.meter import KVMeter, KVShape
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.request import GenerationRequest
    from budgetllm.engine.thinking import ThinkingController
    from budgetllm.types import SamplingParams

    cfg = loaded.config
    rule = EvictionRule.for_call(loaded.dms, compression, len(prompt_ids) + tokens, prompt_ids, loaded)
    shape = KVShape(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, loaded.dtype.itemsize)
    return GenerationRequest(prompt_ids=list(prompt_ids), rule=rule, sampling=SamplingParams(),
                             controller=ThinkingController(None, 0, tokens, encode=lambda s: []),
                             meter=KVMeter(shape, rule.ratio, rule.mode), eos_ids=set())


def run_backend(backend, loaded, prompt_ids, compression, tokens) -> dict:
    req = _request(loaded, backend, prompt_ids, compression, tokens)
    c0 = time.process_time()
    out = [s.token_id for s in backend.run(req) if s.finished is None]
    cpu = time.process_time() - c0
    kv = req.meter.result()
    n = len(out) - 1  # forwards after the first token
    return {"tok_s": n / req.decode_seconds, "cpu_ms_per_token": 1e3 * cpu / len(out), "tokens": out,
            "prefill_s": req.prefill_seconds, "compression_achieved": kv.compression_achieved,
            "rule": req.rule.mode}


def run_hf(hf_model, prompt_ids, tokens) -> dict:
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.t: list[float] = []

        def put(self, value):
            self.t.append(time.perf_counter())

        def end(self):
            pass

    ids = torch.tensor([prompt_ids])
    stamps = Stamps()
    c0 = time.process_time()
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                            do_sample=False, streamer=stamps, pad_token_id=0)
    cpu = time.process_time() - c0
    gen = stamps.t[1:]  # the first put is the prompt
    return {"tok_s": (len(gen) - 1) / (gen[-1] - gen[0]), "cpu_ms_per_token": 1e3 * cpu / len(gen),
            "tokens": out[0, len(prompt_ids):].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    from tqdm import tqdm

    from budgetllm.engine.cpu import CPUBackend
    from budgetllm.engine.reference.backend import ReferenceBackend
    from budgetllm.models.loading import load_model

    t0 = time.perf_counter()
    loaded = load_model(None, device="cpu", progress=True)
    pristine = replace(loaded, hf_model=copy.deepcopy(loaded.hf_model))  # before the CPU backend re-points
    load_s = time.perf_counter() - t0
    prompt_ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    prompt_ids = list(getattr(prompt_ids, "input_ids", prompt_ids))
    ref, cpu = ReferenceBackend(pristine, prefix_cache=False), CPUBackend(loaded, prefix_cache=False)
    variants = {"hf_generate": lambda: run_hf(pristine.hf_model, prompt_ids, a.tokens)}
    for cr in (1, 8):
        variants[f"reference_cr{cr}"] = lambda cr=cr: run_backend(ref, pristine, prompt_ids, cr, a.tokens)
        variants[f"cpu_cr{cr}"] = lambda cr=cr: run_backend(cpu, loaded, prompt_ids, cr, a.tokens)
    threads = [int(t) for t in a.threads.split(",")]
    names = list(variants)
    runs: dict = {f"{name}@{t}t": [] for t in threads for name in names}
    load_before = os.getloadavg()
    with tqdm(total=a.rounds * len(threads) * len(names), desc="cpu decode", unit="run") as bar:
        for r in range(a.rounds):
            for t in threads:
                torch.set_num_threads(t)
                for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
                    bar.set_postfix_str(f"round {r + 1} {name} {t}t")
                    res = variants[name]()
                    res["loadavg_1m"] = os.getloadavg()[0]
                    runs[f"{name}@{t}t"].append(res)
                    result = _result(runs, names, threads, a, prompt_ids, load_s, load_before)
                    Path(a.out).write_text(json.dumps(result, indent=1))
                    bar.update()
    summary, ratios, checks = result["summary"], result["ratios"], result["checks"]
    for k, v in summary.items():
        print(f"{k:24s} {v['tok_s_median']:7.2f} tok/s  {v['cpu_ms_per_token_median']:7.1f} cpu-ms/token")
    print(json.dumps(ratios, indent=1), json.dumps(checks, indent=1))


def _result(runs, names, threads, a, prompt_ids, load_s, load_before) -> dict:
    """The JSON written after every run (so a run cut short still leaves its medians)."""
    runs = {k: v for k, v in runs.items() if v}
    summary = {k: {"tok_s_median": round(statistics.median(x["tok_s"] for x in v), 2),
                   "tok_s_all": [round(x["tok_s"], 2) for x in v],
                   "cpu_ms_per_token_median": round(statistics.median(x["cpu_ms_per_token"] for x in v), 2)}
               for k, v in runs.items()}
    ratios = {}
    for t in threads:
        hf = summary.get(f"hf_generate@{t}t")
        for name in names[1:]:
            s = summary.get(f"{name}@{t}t")
            if hf is None or s is None:
                continue
            per_round = [x / y for x, y in zip(s["tok_s_all"], hf["tok_s_all"], strict=False)]  # same round: same load
            ratios[f"{name}@{t}t_vs_hf"] = {"wall": round(s["tok_s_median"] / hf["tok_s_median"], 3),
                                           "wall_per_round": [round(r, 3) for r in per_round],
                                           "cpu_time": round(hf["cpu_ms_per_token_median"] / s["cpu_ms_per_token_median"], 3)}
    # greedy tokens in common with the oracle (HF's min_new_tokens bans EOS, ours only ignores it: after
    # the model's own EOS the two continue differently)
    checks = {f"{name}@{t}t_tokens_in_common_with_{other}": _common(runs[f"{name}@{t}t"][0]["tokens"],
                                                                     runs[f"{other}@{t}t"][0]["tokens"])
              for t in threads for name, other in (("cpu_cr1", "reference_cr1"), ("cpu_cr8", "reference_cr8"),
                                                    ("cpu_cr1", "hf_generate"))
              if f"{name}@{t}t" in runs and f"{other}@{t}t" in runs}
    result = {
        "rounds_done": min(len(v) for v in runs.values()) if runs else 0,
        "what": f"SmolLM2-135M-Instruct (embedded, real weights, float32), {len(prompt_ids)}-token prompt, "
                f"{a.tokens} greedy tokens (EOS ignored), decode tok/s (prefill excluded), median over the interleaved rounds done (of {a.rounds} planned)",
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "conditions": "shared machine (other engineers' jobs running); wall numbers are noisy, CPU time per token is the steadier view",
        "model_load_s": round(load_s, 1),
        "compression_achieved": {k: v[0].get("compression_achieved") for k, v in runs.items() if "cr" in k},
        "summary": summary, "ratios": ratios, "checks": checks,
    }
    return result


def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
