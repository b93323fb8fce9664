"""Constrained decoding on the GPU: decode tok/s with every request constrained vs none, and the
compile time of a 10-tool schema (cold, then cached). Targets (docs/constrained.md): >= 0.95x at
batch 1 and 64; a 10-tool set compiles in <= 20 ms cached.

    python -m budgetllm.benchmarks.constrained [--model PATH_OR_ID] [--batches 1 64] [--tokens 256]
                                               [--out bench/results/constrained-<card>.json]

Each point runs the same prompts three times on one paged engine: unconstrained (up to
``--tokens`` each), every request with ``response_format`` (a JSON schema), and unconstrained again
with each request capped at the token count of its constrained twin (equal work: a constrained
answer ends when its JSON is complete, so it is shorter). Every run's numbers are kept:

- ``ratio`` (the target's number, ``ratio_basis`` says which): decode tok/s at the full batch,
  constrained over unconstrained, by the engine benchmark's rule (median start-to-start time of
  consecutive decode steps with all ``batch`` requests decoding, host work included); the same
  batch size in both modes, so unequal answer lengths do not enter. Falls back to the decode-step
  rate over all steps when either mode has fewer than 8 full-batch steps.
- ``ratio_end_to_end_equal_work``: generated tokens / wall time, constrained over the matched run
  (prefill, thread start and per-request set-up included); ``ratio_end_to_end_first_run``: over the
  first, uncapped run (unequal work, kept to compare with earlier results).
- ``steps_*``: the engine's own per-step timings, the decode-only tok/s over all decode steps, and
  the host milliseconds per step in mask building; ``full_batch_*``: the full-batch rate per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

# A typical agent's tool set (also bench/grammar_libs.py's, for the CPU library comparison).
TOOLS = [
    {"name": "calculator", "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}},
    {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}},
    {"name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1, "maximum": 50}}, "required": ["query"]}},
    {"name": "send_email", "parameters": {"type": "object", "properties": {"to": {"type": "array", "items": {"type": "string"}}, "subject": {"type": "string"}, "body": {"type": "string"}}, "required": ["to", "body"]}},
    {"name": "create_event", "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "start": {"type": "string"}, "minutes": {"type": "integer"}, "attendees": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}}, "required": ["email"]}}}, "required": ["title", "start"]}},
    {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}}, "required": ["path"]}},
    {"name": "write_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}, "append": {"type": "boolean"}}, "required": ["path", "content"]}},
    {"name": "convert_currency", "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}, "required": ["amount", "from", "to"]}},
    {"name": "translate", "parameters": {"type": "object", "properties": {"text": {"type": "string"}, "target": {"enum": ["en", "fr", "de", "es", "ja"]}}, "required": ["text", "target"]}},
    {"name": "set_reminder", "parameters": {"type": "object", "properties": {"text": {"type": "string"}, "at": {"type": "string"}, "repeat": {"enum": ["none", "daily", "weekly"]}}, "required": ["text", "at"]}},
]

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}, "items": {"type": "array", "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "score": {"type": "number"},
                                     "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}}},
    "required": ["name", "score"]}}}, "required": ["title", "items"]}


def ten_tools() -> list[dict]:
    return [{"type": "function", "function": t} for t in TOOLS]


def run_batch(llm, batch: int, tokens: int | list[int], constrained: bool) -> tuple[list[int], float]:
    """Each request's output tokens, and the wall seconds of the whole batch (``tokens``: one
    max_tokens for all, or one per request)."""
    rf = {"type": "json_schema", "json_schema": {"name": "list", "schema": SCHEMA}} if constrained else None
    limits = tokens if isinstance(tokens, list) else [tokens] * batch
    counts = [0] * batch
    errors: list = []

    def one(i: int) -> None:
        try:
            g = llm.generate(f"List some things, #{i}.", max_tokens=max(1, limits[i]), temperature=1.0, seed=i,
                             compression=1, response_format=rf)
            counts[i] = g.usage.output_tokens
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(batch)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return counts, time.perf_counter() - t0


def engine_probe(llm) -> dict | None:
    """Counts the paged engine thread's host seconds in mask building (fill + copies) and in the
    per-row host logic after the readback (the matcher's accept), by wrapping both where the engine
    looks them up (found through the backend's classes, wherever the modules live)."""
    backend = llm.backend
    runner = getattr(backend, "runner", None)
    if runner is None or not hasattr(backend, "decode_log"):
        return None
    masks = getattr(sys.modules[type(runner.sampler).__module__], "HostMasks", None)
    probe = {"mask_s": 0.0, "advance_s": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                probe[key] += time.perf_counter() - t
        return wrapper

    if masks is not None:
        masks.build = timed(masks.build, "mask_s")
    from budgetllm.engine import step as step_mod

    original = step_mod.advance
    wrapped = timed(original, "advance_s")
    for mod in list(sys.modules.values()):  # every engine module that imported it by name
        if getattr(mod, "__name__", "").startswith("budgetllm.engine") and getattr(mod, "advance", None) is original:
            mod.advance = wrapped
    return probe


def step_breakdown(llm, probe: dict | None, t0: float, t1: float, before: dict) -> dict:
    """Decode steps that started in [t0, t1): medians of the engine's step phases (ms) and the
    probe's host seconds per step, to say where a slower constrained step spends its time."""
    log = [e for e in list(llm.backend.decode_log) if t0 <= e[1] < t1] if probe is not None else []
    if not log:
        return {}
    n = len(log)
    out = {"decode_steps": n, "mean_batch": sum(e[0] for e in log) / n,
           "decode_tok_s": sum(e[0] for e in log) / sum(e[3] for e in log),
           "step_ms_median": statistics.median(e[3] for e in log) * 1e3,
           "to_readback_ms_median": statistics.median(e[2] for e in log) * 1e3,
           "launch_ms_median": statistics.median(e[4] for e in log) * 1e3}
    for key in ("mask_s", "advance_s"):
        out[key.replace("_s", "_ms_per_step")] = (probe[key] - before[key]) * 1e3 / n
    return out


def full_batch_rate(llm, batch: int, since: float) -> dict:
    """The engine benchmark's decode rate (budgetllm.benchmarks.engine_bench): the median
    start-to-start time of consecutive decode steps over the whole batch (all ``batch`` requests
    decoding, host work included, no prefill in between), so both modes are compared at the same
    batch size whatever their token counts."""
    from budgetllm.benchmarks.engine_bench import _full_batch_intervals

    full = _full_batch_intervals(list(llm.backend.decode_log), batch, since)
    if not full:
        return {"steps": 0}
    step = statistics.median_high(full)
    return {"steps": len(full), "step_ms": step * 1e3, "decode_tok_s": batch / step}


def headline(point: dict, batch: int, min_steps: int = 8) -> dict:
    """The target's ratio: decode tok/s at the full batch, constrained over unconstrained (the
    larger full-batch sample of the two unconstrained runs); where either mode has fewer than
    ``min_steps`` full-batch steps, the decode-step rate over all its steps (``steps_*``; batch
    sizes then differ). End to end (tokens / wall, equal work: the matched run) comes next to it."""
    con = point.get("full_batch_constrained") or {}
    free = max((point.get(f"full_batch_{n}") or {} for n in ("unconstrained", "unconstrained_matched")),
               key=lambda r: r.get("steps", 0))
    out: dict = {"ratio_end_to_end_equal_work": point["tok_s_constrained"] / point["tok_s_unconstrained_matched"],
                 "ratio_end_to_end_first_run": point["tok_s_constrained"] / point["tok_s_unconstrained"]}
    if con.get("steps", 0) >= min_steps and free.get("steps", 0) >= min_steps:
        out.update(ratio=con["decode_tok_s"] / free["decode_tok_s"], ratio_basis="full-batch decode steps")
    else:
        a, b = point["steps_constrained"], point["steps_unconstrained"]
        out.update(ratio=a["decode_tok_s"] / b["decode_tok_s"] if a and b else None,
                   ratio_basis="all decode steps (too few full-batch steps)")
    return out


def compile_times(llm) -> dict:
    from budgetllm.constrain import GrammarCompiler, tool_call_spec

    spec = tool_call_spec(ten_tools(), None, llm.prompter.tool_format())
    gc = GrammarCompiler(llm.tokenizer, getattr(llm.loaded.config, "vocab_size", None))
    t0 = time.perf_counter()
    gc.compile(spec)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(20):
        t0 = time.perf_counter()
        gc.constraint(spec, llm.prompter.eos_ids)
        warm.append(time.perf_counter() - t0)
    return {"compile_10_tools_cold_ms": cold * 1e3, "compile_10_tools_cached_ms": statistics.median(warm) * 1e3}


def measure(llm, batches: list[int], tokens: int) -> dict:
    """The compile times and one point per batch size (see the module docstring)."""
    result: dict = {"model": llm.model_name, "tokens": tokens, **compile_times(llm), "points": []}
    probe = engine_probe(llm)
    run_batch(llm, 2, 16, True)  # warm-up: graphs, allocator, the schema's compile
    for b in batches:
        point: dict = {"batch": b}
        # "unconstrained": the same prompts, up to --tokens each (the first run's setting, kept for
        # comparison); "constrained": every request with the JSON schema; "unconstrained_matched":
        # each request capped at the token count its constrained twin produced (equal work, up to
        # the requests that the model itself ends earlier with its stop token).
        counts: dict = {}
        for name, constrained, limit in (("unconstrained", False, tokens), ("constrained", True, tokens),
                                         ("unconstrained_matched", False, None)):
            before, t0 = dict(probe or {}), time.perf_counter()
            got, s = run_batch(llm, b, limit if limit is not None else counts["constrained"], constrained)
            counts[name] = got
            steps = step_breakdown(llm, probe, t0, time.perf_counter(), before)
            point.update({f"tok_s_{name}": sum(got) / s, f"tokens_{name}": sum(got), f"wall_s_{name}": s,
                          f"steps_{name}": steps,
                          f"full_batch_{name}": full_batch_rate(llm, b, t0) if probe is not None else {}})
        point.update(headline(point, b))
        result["points"].append(point)
        print(json.dumps(point))
    return result


def main(argv: list[str] | None = None) -> dict:
    import torch

    from budgetllm import LLM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    llm = LLM.from_pretrained(a.model, backend="paged", progress=False)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"card": card, **measure(llm, a.batches, a.tokens)}
    out = Path(a.out or f"bench/results/constrained-{card.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "points"}))
    return result


if __name__ == "__main__":
    main()
