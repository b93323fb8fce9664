"""Building the paged runner on the CPU (tiny model, Triton kernels in the interpreter): each CUDA-graph
bucket is warmed up eagerly at exactly its row count before its capture (what a first launch does must
not happen inside a capture), the warm-up leaves the pool as it found it, a failed construction lets go
of everything it had allocated, and a closed runner drops its graph cycles at once."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

import gc  # noqa: E402
import weakref  # noqa: E402

import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402


def _backend(loaded, **kw):
    from budgetllm.engine.paged.backend import PagedBackend

    opts = dict(max_seqs=4, page_size=4, num_pages=300, cuda_graphs=False, emulate_graphs=True, max_context=64)
    return PagedBackend(loaded, **{**opts, **kw})


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return LLM.from_pretrained(str(tiny_dir("qwen2", "adapter")), backend="reference", device="cpu",
                               progress=False).loaded


def test_each_bucket_is_warmed_at_its_own_size_and_the_pool_is_left_untouched(loaded, monkeypatch):
    from budgetllm.engine.paged.model_runner import ModelRunner

    calls = []
    body = ModelRunner.decode_body

    def spy(self, bs, num_splits):
        calls.append((bs, [int(s) for s in self.ibuf[1, :bs]], [int(i) for i in self.ibuf[2, :bs]]))
        return body(self, bs, num_splits)

    monkeypatch.setattr(ModelRunner, "decode_body", spy)
    from budgetllm.engine.paged import step_io

    monkeypatch.setattr(step_io, "AHEAD_ROWS", 0)  # no spare padding slots for launch-ahead's void steps
    backend = _backend(loaded)
    try:
        r = backend.runner
        assert r.buckets == [1, 2, 4] and len(r.pad_slots) == 1  # fewer padding slots than the largest bucket
        assert [bs for bs, _, _ in calls] == [4, 2, 1]  # every bucket at its own size (it used to be 1, 1, 1)
        for bs, slots, inc in calls:
            assert len(set(slots)) == bs and inc == [0] * bs  # one slot per row (rows race otherwise), no advance
        kv = r.kv
        seq = slice(0, r.num_seq_slots)
        assert backend.device_free_pages_now() == backend.pool_stats()["pages_total"]
        assert bool((kv.seq_pos[seq] == 0).all()) and bool((kv.block_tables[:, seq] == -1).all())
        assert bool((kv.row_lens[:, seq] == 0).all()) and int(r.refs.abs().sum()) == 0
    finally:
        backend.close()


def test_the_warmed_runner_still_equals_the_reference(loaded, tiny_dir):
    """Decoding on sequence slots the warm-up used (and released) gives the reference's tokens."""
    ref = LLM.from_pretrained(str(tiny_dir("qwen2", "adapter")), backend="reference", device="cpu", progress=False)
    paged = LLM(ref.loaded, _backend(ref.loaded))
    try:
        for compression in (1, 8):
            a = ref.generate("Tell me about the sea.", compression=compression, max_tokens=8)
            b = paged.generate("Tell me about the sea.", compression=compression, max_tokens=8)
            assert b.token_ids == a.token_ids
    finally:
        paged.close()


def test_a_failed_capture_releases_what_the_runner_allocated(loaded, monkeypatch):
    """A failure in the middle of the construction (here: the decode graphs' capture) propagates with
    its traceback as a note, and the half-built runner's pool and buffers are freed even while the
    exception is held (its frames no longer pin them: on the H200 a failed capture kept its memory)."""
    import budgetllm.engine.paged.model_runner as mr
    from budgetllm.engine.paged.cuda_graphs import DecodeGraphs

    pools = []
    build = mr.build_pool

    def tracked(*a, **kw):
        kv, info = build(*a, **kw)
        pools.append(weakref.ref(kv.k_pool))
        return kv, info

    def fail(self):
        raise RuntimeError("injected capture failure")

    monkeypatch.setattr(mr, "build_pool", tracked)
    monkeypatch.setattr(DecodeGraphs, "capture", fail)
    with pytest.raises(RuntimeError, match="injected capture failure") as e:
        _backend(loaded)
    gc.collect()
    assert len(pools) == 1 and pools[0]() is None  # the pool is gone while ``e`` still holds the error
    assert any("fail" in n and "capture" in n for n in e.value.__notes__)  # the original traceback, as text


def test_closing_drops_the_runner_at_once(loaded):
    """close() breaks the runner <-> graphs cycles: the pool goes without waiting for the collector
    (which, run inside another engine's capture, destroyed CUDA graphs mid-capture on the H200)."""
    backend = _backend(loaded)
    ref = weakref.ref(backend.runner.kv.k_pool)
    graphs = weakref.ref(backend.runner.graphs)
    gc.disable()
    try:
        backend.close()
        assert ref() is None and graphs() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("fast", [True, False])
def test_the_decode_body_makes_no_host_round_trip(loaded, monkeypatch, fast):
    """What a CUDA graph cannot hold: inside ``decode_body`` (the captured step, 5-launch fused layer
    and cuBLAS path, at every bucket), budgetllm code neither reads a tensor back to the host
    (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)``, ...) nor builds a tensor from host data
    (``torch.tensor``/``as_tensor``: a pageable host-to-device copy). Calls from the Triton interpreter
    and torch itself are not counted (frames outside budgetllm)."""
    from budgetllm.engine.paged.model_runner import ModelRunner, RunnerConfig
    from tests.engine.enginelib import host_round_trips

    r = ModelRunner(loaded, RunnerConfig(max_seqs=4, page_size=4, num_pages=300, max_context=64,
                                         emulate_graphs=True, small_batch_gemv=fast))
    assert (r.fast is not None) == fast and r.buckets == [1, 2, 4]
    for bs in r.buckets:
        seq = list(range(bs - len(r.pad_slots)))
        r.fill_decode([], bs, r.pad_slots + seq)
        with host_round_trips(monkeypatch, builders=True) as hits:
            r.decode_body(bs, r.num_splits(bs))
        assert hits == []
        r.release(seq)
    with host_round_trips(monkeypatch, builders=True) as hits:
        r.release([2, 0])  # the control: releasing scattered slots builds their index on the host, and is seen
    assert any(h[0] == "torch.tensor" for h in hits), hits
    r.close()
