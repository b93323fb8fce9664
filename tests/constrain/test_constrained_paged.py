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
    """The answer as JSON. strict=False: xgrammar's JSON grammar lets a raw control character
    (U+0000-U+001F) into a string, which json.loads(strict=True) refuses; a known gap of the
    grammar (found by the property test below), left open in issue #14's note."""
    return json.loads(text, strict=False)

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
    assert sb.mask_rows.tolist() == [1, 3]
    out = GPUSampler(cpu, 0)(logits.clone(), sb)
    assert out.tolist() == [int(top[0]), 7, int(top[2]), 31]
    sb = make_sampling_batch([SamplingParams(temperature=1.0)] * 4, [None] * 4, cpu, [Only(3)] * 4)
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
