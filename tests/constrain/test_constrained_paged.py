"""Constrained decoding in the paged engine: on the CPU (Triton interpreter, tiny model) the paged
backend makes the same greedy tokens as the reference backend under a grammar, with constrained and
unconstrained requests in one batch; sampled answers validate; the batched sampler masks exactly
the constrained rows. GPU-marked twins run the same on the H200."""

from __future__ import annotations

import json
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

import jsonschema  # noqa: E402
import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402
from budgetllm.engine.paged.sampler import GPUSampler, make_sampling_batch  # noqa: E402
from budgetllm.types import SamplingParams  # noqa: E402
from tests.engine.enginelib import run_concurrently  # noqa: E402

pytest.importorskip("xgrammar")


def _loads(text: str):
    """The answer as strict JSON (json.loads refuses raw control characters inside strings: the
    grammar must not let them in, see budgetllm/constrain/compiler.py)."""
    return json.loads(text)

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                            "tag": {"enum": ["red", "blue"]}}, "required": ["ok", "n"]}
RF = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string", "maxLength": 8}}, "required": ["expression"]}}}]


def _pair(tiny_dir, device="cpu"):
    from budgetllm.engine.paged.backend import PagedBackend

    ref = LLM.from_pretrained(str(tiny_dir("llama", None)), backend="reference", device=device, progress=False,
                              dtype=torch.float32)  # float32 on the GPU too: greedy tokens compared exactly
    kw = dict(cuda_graphs=False) if device == "cpu" else {}
    backend = PagedBackend(ref.loaded, max_seqs=4, page_size=4, num_pages=400, max_context=256,
                           max_prefill_tokens=64, prefix_cache=0, **kw)  # no kept states: every page comes back
    return ref, LLM(ref.loaded, backend)


@pytest.fixture(scope="module")
def pair(tiny_dir):
    ref, paged = _pair(tiny_dir)
    yield ref, paged
    paged.backend.close()


def check_same_tokens_mixed_batch(ref, paged):
    calls = [dict(response_format=RF, max_tokens=60), dict(max_tokens=8),
             dict(tools=TOOLS, tool_choice="any", max_tokens=60), dict(response_format={"type": "regex", "pattern": "[ab]{3}"}, max_tokens=10)]
    expected = [ref.generate("Hello", compression=1, **c) for c in calls]
    got, errors = run_concurrently(lambda i: paged.generate("Hello", compression=1, **calls[i]), len(calls))
    assert not errors, errors
    for i, exp in enumerate(expected):
        assert got[i].token_ids == exp.token_ids and got[i].finish_reason == exp.finish_reason
    jsonschema.validate(_loads(got[0].text), SCHEMA)
    assert got[2].finish_reason == "tool_calls" and got[2].tool_calls[0].name == "calculator"
    assert len(got[3].text) == 3 and set(got[3].text) <= {"a", "b"}
    stats = paged.pool_stats()
    assert stats["pages_free"] == stats["pages_total"] and stats["active"] == 0


def test_paged_matches_reference_under_grammars(pair):
    check_same_tokens_mixed_batch(*pair)


def test_paged_sampled_answers_validate(pair):
    _, paged = pair
    got, errors = run_concurrently(
        lambda i: paged.generate("Hi", response_format=RF, max_tokens=60, temperature=1.0, seed=i, compression=1), 3)
    assert not errors, errors
    for g in got.values():
        assert g.finish_reason == "stop"
        jsonschema.validate(_loads(g.text), SCHEMA)


def test_sampler_masks_exactly_the_constrained_rows():
    class Only:  # a stand-in grammar: token ``tok`` only
        vocab_size = 50

        def __init__(self, tok):
            self.tok = tok

        def fill(self, bitmask, row):
            bitmask[row] = 0
            bitmask[row, self.tok // 32] = 1 << (self.tok % 32) if self.tok % 32 != 31 else -(1 << 31)
            return True

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    top = logits.argmax(-1)
    cpu = torch.device("cpu")
    sb = make_sampling_batch([SamplingParams()] * 4, [None] * 4, cpu, [None, Only(7), None, Only(31)])
    assert sb.mask_rows.tolist() == [1, 3] and not sb.mask_all_rows
    out = GPUSampler(cpu, 0)(logits.clone(), sb)
    assert out.tolist() == [int(top[0]), 7, int(top[2]), 31]
    sb = make_sampling_batch([SamplingParams(temperature=1.0)] * 4, [None] * 4, cpu, [Only(3)] * 4)
    assert sb.mask_all_rows  # every row masked: in place, no gather/scatter
    assert GPUSampler(cpu, 1)(logits.clone(), sb).tolist() == [3, 3, 3, 3]
    plain = make_sampling_batch([SamplingParams()] * 4, [None] * 4, cpu, [None] * 4)
    assert plain.mask_rows is None and plain.mask_bits is None  # unconstrained batches build nothing


@pytest.mark.gpu
def test_gpu_paged_matches_reference_under_grammars(tiny_dir):
    ref, paged = _pair(tiny_dir, "cuda")
    try:
        check_same_tokens_mixed_batch(ref, paged)
    finally:
        paged.backend.close()


@pytest.mark.gpu
def test_gpu_property_every_answer_validates(tiny_dir):
    """The reference property test's schemas on the paged engine (CUDA graphs on)."""
    from hypothesis import HealthCheck, given, settings

    from tests.constrain.test_constrained_reference import SCHEMAS, _object

    _, paged = _pair(tiny_dir, "cuda")

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schema=_object(SCHEMAS))
    def check(schema):
        rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        got, errors = run_concurrently(lambda i: paged.generate("JSON please", response_format=rf, max_tokens=200,
                                                                temperature=1.0, seed=i), 4)
        assert not errors, errors
        for g in got.values():
            assert g.finish_reason == "stop", (schema, g.text)
            jsonschema.validate(_loads(g.text), schema)

    try:
        check()
    finally:
        paged.backend.close()


def test_batched_mask_fill_equals_row_by_row(tiny_llm):
    """xgrammar's threaded batch fill (large batches) masks the logits exactly as the row-by-row
    fill does: grammars mid-string, free text before a tool call (every token allowed), complete."""
    import random

    from budgetllm.constrain import GrammarCompiler, call_spec
    from budgetllm.constrain.mask import allowed_tokens
    from budgetllm.engine.paged.sampler import HostMasks

    tok = tiny_llm("llama").tokenizer
    gc = GrammarCompiler(tok)
    specs = [call_spec(RF, None), call_spec(None, TOOLS), call_spec({"type": "regex", "pattern": "[ab]{3}"}, None)]
    rng, cpu = random.Random(0), torch.device("cpu")
    cons = [gc.constraint(specs[i % 3], [tok.eos_token_id]) for i in range(11)]
    rowwise, batched = HostMasks(), HostMasks()
    rowwise.BATCH_FILL = 10**9
    logits = torch.randn(12, gc.vocab_size, generator=torch.Generator().manual_seed(0))
    seen_batched, bufs = 0, None
    for _ in range(12):
        row_c = [None] + [None if c.terminated else c for c in cons]  # row 0 unconstrained; ended rows leave
        a, b = logits.clone(), logits.clone()
        for host, out in ((rowwise, a), (batched, b)):
            rows, bits = host.build(row_c, cpu)
            if rows is not None:
                from budgetllm.constrain.mask import apply_bitmask

                apply_bitmask(out, bits, rows)
        seen_batched += batched._batch is not None
        bufs = bufs or (batched._buf, batched._dev)
        assert batched._buf is bufs[0] and batched._dev is bufs[1]  # reused, not made per step
        assert torch.equal(a, b)
        assert torch.equal(a[0], logits[0])  # the unconstrained row pays nothing
        for c in cons:  # each grammar takes a random allowed token
            if c.terminated:
                continue
            ok = allowed_tokens(*_one_mask(c), gc.vocab_size)[0].nonzero().flatten().tolist()
            c.accept(rng.choice(ok))
    assert seen_batched


def _one_mask(c):
    from budgetllm.constrain.mask import allocate_bitmask

    m = allocate_bitmask(1, c.vocab_size)
    c.fill(m, 0)
    return (m,)
