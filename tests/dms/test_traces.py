"""Self-distillation traces: the model writes them through LLM (thinking on, no eviction), they round-trip
through JSONL, pack into long rows, and `budgetllm retrofit --data` trains on them."""

from __future__ import annotations

import argparse
import json

from budgetllm.dms.data import load_text_files, pack
from budgetllm.dms.traces import generate_traces, write_traces


def test_traces_are_the_models_own_dense_generations(tiny_llm, tmp_path):
    llm = tiny_llm("llama", "adapter")
    traces = generate_traces(llm, 3, seed=1, max_tokens=24, min_tokens=1, concurrency=2, long_context=False)
    assert len(traces) == 3 and {t["kind"] for t in traces} == {"arithmetic", "variable_tracking", "kv_retrieval"}
    again = generate_traces(llm, 3, seed=1, max_tokens=24, min_tokens=1, concurrency=1, long_context=False)
    assert [t["ids"] for t in traces] == [t["ids"] for t in again]  # seeded: reproducible, order kept
    t = traces[0]
    assert t["tokens"] == len(t["ids"]) > 24 and t["reasoning_tokens"] >= 0

    path = write_traces(tmp_path / "traces.jsonl", traces, model="tiny")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["model"] == "tiny" and first["ids"] == t["ids"]
    seqs = load_text_files([path], llm.tokenizer)
    assert seqs == [x["ids"] for x in traces]
    rows = pack(seqs, 32, min_rows=4)
    assert rows.shape[1] == 32 and rows.shape[0] >= 4


def test_retrofit_trains_on_a_traces_file(tiny_dir, tiny_llm, tmp_path):
    from budgetllm.dms.cli import add_retrofit_subcommand

    traces = generate_traces(tiny_llm("llama"), 2, seed=3, max_tokens=40, min_tokens=1, long_context=False)
    path = write_traces(tmp_path / "t.jsonl", traces)
    p = argparse.ArgumentParser()
    add_retrofit_subcommand(p.add_subparsers(dest="command"))
    out = tmp_path / "ad.safetensors"
    args = p.parse_args(["retrofit", "--model", str(tiny_dir("llama")), "--out", str(out), "--data", str(path),
                         "--no-builtin", "--window", "8", "--seq-len", "32", "--steps", "2", "--batch-size", "2",
                         "--heldout", "2", "--device", "cpu", "--no-progress"])
    assert args.func(args) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["steps"] == 2 and meta["threshold_table"]
