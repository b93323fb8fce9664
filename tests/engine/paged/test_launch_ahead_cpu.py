"""Launch-ahead decode (engine/paged/launch_ahead.py) against lockstep on the CPU (Triton interpreter,
emulated graph buckets and padding): the same requests on an engine with ``launch_ahead`` on and one
with it off give the same tokens, finish reasons, usage and pages, the steps really ran ahead (and
some were void), and every page comes back.

Requests are queued before the engine thread starts where the batch composition matters (seeded
sampling draws one random stream for the whole batch), so both engines see the same batches.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

import threading  # noqa: E402

import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402
from budgetllm.types import SamplingParams  # noqa: E402
from tests.engine.enginelib import all_pages_back, request, run_batch, run_concurrently, settle  # noqa: E402


def _backend(loaded, on: bool, **kw):
    from budgetllm.engine.paged.backend import PagedBackend

    opts = dict(max_seqs=4, page_size=4, num_pages=400, cuda_graphs=False, emulate_graphs=True, max_context=128,
                max_prefill_tokens=32, seed=1234)
    return PagedBackend(loaded, launch_ahead=on, **{**opts, **kw})


@pytest.fixture(scope="module")
def dms(tiny_dir):
    """A tiny model with DMS decisions (the adapter), and an engine with launch-ahead on and one off."""
    ref = LLM.from_pretrained(str(tiny_dir("llama", "adapter")), backend="reference", device="cpu", progress=False)
    on, off = _backend(ref.loaded, True), _backend(ref.loaded, False)
    yield ref, on, off
    on.close()
    off.close()


def both(on, off, make, stop_after=None) -> tuple[list, list]:
    """The same requests (``make()`` builds a fresh list) on both engines; the on-engine ran ahead."""
    before = on.ahead_counts["launched"]
    a = run_batch(off, make(), stop_after)
    b = run_batch(on, make(), stop_after)
    assert b == a
    assert on.ahead_counts["launched"] > before and off.ahead_counts["launched"] == 0
    return a, b


def _eos_at(tokens: list[int], k: int) -> int:
    """A token first emitted at step k (so an EOS set to it ends the request there)."""
    for j in range(k, len(tokens)):
        if tokens[j] not in tokens[:j]:
            return tokens[j]
    raise AssertionError("no fresh token to end on")


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_rows_ending_at_different_steps(dms, sampled):
    """Three rows at CR 8 (evicting): one ends on a sampled EOS, one by max_tokens, one runs on; with
    greedy and with seeded sampling (one random stream for the batch: a void step must give it back)."""
    ref, on, off = dms
    prompts = [[5, 9, 14, 3, 22, 7], [8, 8, 31, 2], [40, 11, 17, 6, 9]]
    params = SamplingParams(temperature=0.9, top_p=0.95) if sampled else SamplingParams()

    def make(eos=None):
        reqs = [request(ref.loaded, p, 8, m) for p, m in zip(prompts, (16, 9, 16), strict=True)]
        for r in reqs:
            r.sampling = params
        if eos is not None:
            reqs[0].eos_ids = {eos}
        return reqs

    first = run_batch(off, make())
    eos = _eos_at(first[0][0], 5)
    voids = on.ahead_counts["void"]
    a, _ = both(on, off, lambda: make(eos))
    assert [x[1] for x in a] == ["stop", "length", "length"] and len(a[0][0]) < 16 and len(a[1][0]) == 9
    assert on.ahead_counts["void"] > voids  # the EOS made the step after it void
    assert a[2][2].evicted_tokens > 0  # pages of evicted entries were reused during decode
    # the next turn of the row that stopped continues from its kept state (the void step left it as is)
    turn2 = lambda: [request(ref.loaded, prompts[0] + a[0][0] + [eos, 21, 22], 8, 6)]  # noqa: E731
    nxt = run_batch(off, turn2())
    assert run_batch(on, turn2()) == nxt and nxt[0][3] == len(prompts[0]) + len(a[0][0])
    all_pages_back(on)
    all_pages_back(off)


def test_cancel_mid_decode_and_a_request_joining(dms):
    """A consumer that closes its stream mid-decode (a cancel; what a stop string does too), and a
    request that joins while two rows decode."""
    ref, on, off = dms
    make = lambda: [request(ref.loaded, [5, 9, 14, 3], 8, 20), request(ref.loaded, [8, 31, 2], 1, 20)]  # noqa: E731
    a, _ = both(on, off, make, stop_after={0: 5})
    assert a[0][1] == "closed" and len(a[0][0]) == 5 and a[1][1] == "length"

    def joined(backend):
        first = [request(ref.loaded, [5, 9, 14, 3], 8, 20), request(ref.loaded, [7, 7, 1], 8, 16)]
        late = request(ref.loaded, [12, 4, 33, 9, 2], 8, 12)
        got: dict = {}

        def call(i):
            r = (first + [late])[i]
            toks = []
            for s in backend.run(r):
                if s.finished is not None:
                    return toks, s.finished, r.meter.result(), r.cached_tokens
                toks.append(s.token_id)
                if i == 0 and len(toks) == 4 and "late" not in got:
                    got["late"] = threading.Thread(target=lambda: got.setdefault("r", call(2)))
                    got["late"].start()

        res, errors = run_concurrently(call, 2)
        got["late"].join(timeout=300)
        settle(backend)
        assert not errors, errors
        return res[0], res[1], got["r"]

    assert joined(on) == joined(off)
    all_pages_back(on)
    all_pages_back(off)


def test_thinking_budget_and_a_grammar_row(tiny_dir):
    """A thinking budget spent (forced hand-off and close tag) and a JSON-schema row beside a plain
    row: steps with those rows run in lockstep, the plain row runs ahead once it is alone; same
    tokens, reasoning counts, finish reasons and pages."""
    pytest.importorskip("xgrammar")
    ref = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed")), backend="reference", device="cpu", progress=False)
    llms = [LLM(ref.loaded, _backend(ref.loaded, on, prefix_cache=0)) for on in (True, False)]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    calls = [dict(thinking_budget=6, max_tokens=16), dict(max_tokens=30),
             dict(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
                  max_tokens=16)]
    results = []
    for llm in llms:
        got, errors = run_concurrently(lambda i, llm=llm: llm.generate("Tell me about the sea.", compression=8,
                                                                      **calls[i]), len(calls))
        assert not errors, errors
        settle(llm.backend)
        results.append([(g.token_ids, g.finish_reason, g.usage.reasoning_tokens, g.usage.kv.evicted_tokens,
                         g.usage.kv.reserved_bytes) for g in (got[i] for i in range(len(calls)))])
    assert results[0] == results[1]
    assert 0 < results[0][0][2] <= 6, results[0][0]  # it thought, within its budget
    assert llms[0].backend.ahead_counts["launched"] > 0  # the plain row, once alone
    for llm in llms:
        all_pages_back(llm.backend)
        llm.close()


def test_a_thinking_row_runs_ahead_inside_its_block(tiny_dir, monkeypatch):
    """Inside its thinking block, away from the budget's close, a row runs ahead (the thinking bursts of
    issue 12 must not fall back to lockstep); the forced hand-off and close run in lockstep; same
    tokens, reasoning count, finish and pages as lockstep."""
    import budgetllm.engine.paged.engine_loop as loop

    ref = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed")), backend="reference", device="cpu", progress=False)
    llms = [LLM(ref.loaded, _backend(ref.loaded, on, prefix_cache=0)) for on in (True, False)]
    seen: list[tuple[bool, str]] = []

    def spy(engine, cur):
        ok = can(engine, cur)
        seen.extend((ok, s.payload.req.controller.phase) for s in cur.batch.seqs)
        return ok

    can = loop.can_run_ahead
    monkeypatch.setattr(loop, "can_run_ahead", spy)
    outs = []
    for llm in llms:
        g = llm.generate("Tell me about the sea.", compression=8, thinking_budget=14, max_tokens=18)
        settle(llm.backend)
        outs.append((g.token_ids, g.finish_reason, g.usage.reasoning_tokens, g.usage.kv.evicted_tokens,
                     g.usage.kv.reserved_bytes))
    assert outs[0] == outs[1]
    assert 0 < outs[0][2] <= 14, outs[0]
    assert (True, "thinking") in seen  # launched ahead inside the block
    assert (False, "closing") in seen or outs[0][2] < 14  # the budget's close ran in lockstep
    for llm in llms:
        all_pages_back(llm.backend)
        llm.close()


def test_stop_string_ends_the_same(dms):
    """A stop string (the output layer closes the stream when it matches): same text and usage."""
    ref, on, off = dms
    full = LLM(ref.loaded, off).generate("Tell me about the sea.", compression=8, max_tokens=16)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 2]
    if not stop.strip():
        pytest.skip("no printable stop string in this tiny model's text")
    a = LLM(ref.loaded, off).generate("Tell me about the sea.", compression=8, max_tokens=16, stop=[stop])
    settle(off)  # the cancel the stop string sent may still run on the engine thread
    b = LLM(ref.loaded, on).generate("Tell me about the sea.", compression=8, max_tokens=16, stop=[stop])
    settle(on)
    assert (b.text, b.token_ids, b.finish_reason) == (a.text, a.token_ids, a.finish_reason)
    assert len(b.token_ids) < len(full.token_ids)
    # (not the usage: a stopped stream's counts the steps the engine ran before it saw the cancel, a
    # race in lockstep too)
    all_pages_back(on)
    all_pages_back(off)


def test_decode_ahead_feeds_on_the_device_without_a_sync_and_a_void_step_writes_nothing(tiny_dir, monkeypatch):
    """``decode_ahead`` after a step equals the lockstep step fed that step's tokens from the host
    (same logits, same cache), reads nothing back to the host while it launches; with an EOS among
    the tokens it is void: no sequence slot, page or position changes."""

    from budgetllm.engine.paged.model_runner import ModelRunner, RunnerConfig
    from budgetllm.engine.paged.sampler import make_sampling_batch
    from budgetllm.engine.rules import FORCED, RowRule
    from tests.engine.enginelib import host_round_trips

    loaded = LLM.from_pretrained(str(tiny_dir("llama", "adapter")), backend="reference", device="cpu",
                                 progress=False).loaded
    r = ModelRunner(loaded, RunnerConfig(max_seqs=4, page_size=4, num_pages=300, max_context=64, window=4,
                                         emulate_graphs=True))
    rule = RowRule(FORCED, period=2)
    rows = [(0, 11, rule), (1, 12, rule), (2, 13, rule)]
    sb = make_sampling_batch([SamplingParams()] * 3, [None] * 3, r.device)
    kv = r.kv
    snap = lambda: {k: v.clone() for k, v in vars(kv).items() if isinstance(v, torch.Tensor)}  # noqa: E731

    def restore(state):
        for k, v in state.items():
            getattr(kv, k).copy_(v)

    for _ in range(6):  # a few steps in: rows past the window, evicting
        tokens = r.sample_and_read(r.decode(rows), sb, decoded=True).tokens
        rows = [(s, t, rule) for (s, _, _), t in zip(rows, tokens, strict=True)]
    before = snap()
    lock = r.decode(rows).clone()
    after_lock = snap()
    restore(before)
    r.read_buf[:3] = torch.tensor([t for _, t, _ in rows])  # what the last step sampled
    eos = r.eos_rows([{-7}, set(), {-9, -8}])  # none of them sampled
    with host_round_trips(monkeypatch) as hits:
        logits = r.decode_ahead(3, eos)
        r.sample(logits, sb, decoded=True)
    assert hits == []
    assert torch.equal(logits, lock)
    assert all(torch.equal(after_lock[k], v) for k, v in snap().items())
    restore(before)
    r.read_buf[:3] = torch.tensor([t for _, t, _ in rows])
    r.decode_ahead(3, r.eos_rows([set(), {rows[1][1]}, set()]))  # row 1 sampled its EOS: void
    S = r.num_seq_slots
    now = snap()
    for k in ("seq_pos", "alloc_state", "free_stack"):
        assert torch.equal(now[k][:S] if k == "seq_pos" else now[k], before[k][:S] if k == "seq_pos" else before[k]), k
    for k in ("row_lens", "block_tables", "ring"):
        assert torch.equal(now[k][:, :S], before[k][:, :S]), k
    r.close()
