"""One grammar compiler per LLM: built on the first constrained call and kept (with its compiled
grammars) until close(). Building it (xgrammar's tokenizer info for the vocabulary) costs ~0.1 s on
a 49k vocabulary; rebuilding it on every call made 64 concurrent constrained requests spend seconds
outside the decode steps (issue 14's batch-64 benchmark)."""

from __future__ import annotations

import json
import threading

import pytest

import budgetllm.constrain as constrain
from budgetllm.constrain.compiler import GrammarCompiler

pytest.importorskip("xgrammar")

RF = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
    "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}


@pytest.fixture
def counted(monkeypatch):
    """Counts GrammarCompiler constructions (the class LLM._constraint looks up)."""
    made: list[GrammarCompiler] = []

    class Counting(GrammarCompiler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(constrain, "GrammarCompiler", Counting)
    return made


def test_sequential_calls_build_one_compiler_and_compile_once(tiny_dir, counted):
    from budgetllm import LLM

    llm = LLM.from_pretrained(str(tiny_dir("llama")), backend="reference", device="cpu", progress=False)
    try:
        for i in range(4):
            out = llm.generate(f"q{i}", response_format=RF, max_tokens=20, temperature=1.0, seed=i)
            assert json.loads(out.text)["ok"] in (True, False)
        events = list(llm.stream("q", response_format=RF, max_tokens=20))
        assert events[-1].kind == "done"
        assert llm.generate("free text", max_tokens=3).usage.output_tokens > 0  # unconstrained: no compiler work
        assert len(counted) == 1 and llm._grammar is counted[0]
        assert counted[0].compiles == 1  # the schema compiled on the first call only
    finally:
        llm.close()
    assert llm._grammar is None  # close drops it with the engine


def test_concurrent_first_calls_build_one_compiler(tiny_dir, counted):
    from budgetllm import LLM

    llm = LLM.from_pretrained(str(tiny_dir("llama")), backend="reference", device="cpu", progress=False)
    errors: list = []

    def one(i):
        try:
            llm.generate(f"q{i}", response_format=RF, max_tokens=20, temperature=1.0, seed=i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(counted) == 1
    finally:
        llm.close()
