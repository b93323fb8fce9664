"""xgrammar vs llguidance on this CPU: schema compile time and per-token mask time (docs/constrained.md).

    python bench/grammar_libs.py [tokenizer-dir]     # default: the embedded SmolLM2 tokenizer

Compile: a 10-tool Hermes tool-call grammar (``<tool_call>\\n{"name": ..., "arguments": ...}``),
cold (a fresh compiler, no cache) and warm (the library's own cache or a deep copy). Mask: one
matcher walked through a valid call, the bitmask of each step filled (batch 1), and 64 matchers
filled together with the library's batch API (batch 64). Medians in milliseconds.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from budgetllm.benchmarks.constrained import TOOLS  # the 10-tool set (also the GPU benchmark's)

CALL = '<tool_call>\n{"name": "create_event", "arguments": {"title": "Team sync", "start": "2026-12-01T10:00", "minutes": 30, "attendees": [{"name": "Ann", "email": "ann@example.com"}]}}\n</tool_call>'
PREFIX = "Let me add it to the calendar.\n"


def call_schema(tools):
    return {"anyOf": [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
                       "required": ["name", "arguments"]} for t in tools]}


def med(xs):
    return statistics.median(xs) * 1e3



def _timed_steps(ids, fill, consume) -> list[float]:
    """Seconds of ``fill()`` (one batch mask) per token of ``ids``, each token then consumed."""
    out = []
    for tid in ids:
        t = time.perf_counter()
        fill()
        out.append(time.perf_counter() - t)
        consume(tid)
    return out


def _summary(info_s, cold, warm, step, step64) -> dict:
    return {"tokenizer_s": info_s, "compile_cold_ms": med(cold), "compile_warm_ms": med(warm),
            "mask_b1_ms": med(step), "mask_b1_mean_ms": statistics.mean(step) * 1e3,
            "mask_b1_p99_ms": sorted(step)[int(0.99 * len(step))] * 1e3,
            "mask_b64_ms": med(step64), "mask_b64_mean_ms": statistics.mean(step64) * 1e3}

def bench_llguidance(tok, ids):
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lnp

    t = time.perf_counter()
    lt = llguidance.hf.from_tokenizer(tok)
    info_s = time.perf_counter() - t
    tags = [llguidance.StructTag(trigger="<tool_call>", begin=f'<tool_call>\n{{"name": "{x["name"]}", "arguments": ',
                                 grammar=x["parameters"], end="}\n</tool_call>") for x in TOOLS]
    grammar = llguidance.StructTag.to_grammar(tags, assume_special=False)
    cold = []
    for _ in range(5):
        t = time.perf_counter()
        m = llguidance.LLMatcher(lt, grammar)
        m.compute_bitmask()  # llguidance builds lexer states lazily: count the first mask
        cold.append(time.perf_counter() - t)
    proto = llguidance.LLMatcher(lt, grammar)
    warm = []
    for _ in range(20):
        t = time.perf_counter()
        proto.deep_copy()
        warm.append(time.perf_counter() - t)
    # batch 1
    mask = lnp.allocate_token_bitmask(1, lt.vocab_size)
    m = proto.deep_copy()
    step = []
    for tid in ids:
        t = time.perf_counter()
        lnp.fill_next_token_bitmask(m, mask, 0)
        step.append(time.perf_counter() - t)
        assert m.consume_token(tid), m.get_error()
    # batch 64
    ex = llguidance.LLExecutor()
    ms = [proto.deep_copy() for _ in range(64)]
    mask64 = lnp.allocate_token_bitmask(64, lt.vocab_size)
    step64 = _timed_steps(ids, lambda: lnp.fill_next_token_bitmask_par(ex, [(x, i) for i, x in enumerate(ms)], mask64),
                          lambda tid: [x.consume_token(tid) for x in ms])
    return _summary(info_s, cold, warm, step, step64)


def bench_xgrammar(tok, ids):
    import xgrammar as xgr

    t = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    info_s = time.perf_counter() - t
    stag = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<tool_call>"], "tags": [
        {"begin": f'<tool_call>\n{{"name": "{x["name"]}", "arguments": ', "content": {"type": "json_schema", "json_schema": x["parameters"]},
         "end": "}\n</tool_call>"} for x in TOOLS]}}
    cold = []
    for _ in range(5):
        comp = xgr.GrammarCompiler(info, cache_enabled=False)
        t = time.perf_counter()
        cg = comp.compile_structural_tag(stag)
        cold.append(time.perf_counter() - t)
    comp = xgr.GrammarCompiler(info)
    cg = comp.compile_structural_tag(stag)
    warm = []
    for _ in range(20):
        t = time.perf_counter()
        comp.compile_structural_tag(stag)
        xgr.GrammarMatcher(cg)
        warm.append(time.perf_counter() - t)
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    m = xgr.GrammarMatcher(cg)
    step = []
    for tid in ids:
        t = time.perf_counter()
        m.fill_next_token_bitmask(mask, 0)
        step.append(time.perf_counter() - t)
        assert m.accept_token(tid)
    ms = [xgr.GrammarMatcher(cg) for _ in range(64)]
    mask64 = xgr.allocate_token_bitmask(64, info.vocab_size)
    bm = xgr.BatchGrammarMatcher()
    step64 = _timed_steps(ids, lambda: bm.batch_fill_next_token_bitmask(ms, mask64),
                          lambda tid: [x.accept_token(tid) for x in ms])
    return _summary(info_s, cold, warm, step, step64)


def main() -> None:
    from transformers import AutoTokenizer

    if len(sys.argv) > 1:
        tok = AutoTokenizer.from_pretrained(sys.argv[1])
    else:
        from budgetllm.models.loading import embedded_model_path

        p = embedded_model_path()
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    ids = tok.encode(PREFIX + CALL, add_special_tokens=False)
    out = {"vocab": len(tok), "tokens_walked": len(ids)}
    for name, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        try:
            out[name] = fn(tok, ids)
        except Exception as e:  # noqa: BLE001 - report what failed, keep the other
            out[name] = {"error": repr(e)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
