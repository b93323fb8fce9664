"""The prefill graphs' padded body (emulated on the CPU: the same body runs eagerly; captured and
replayed on the GPU) against the eager prefill, chunk by chunk on one sequence: the same logits, the same rows (positions, flags, K/V), the
same positions and free pages (the padding scratch chunk gives back every page it took), including a
chunk that fills its bucket exactly (an empty scratch chunk) and chunks on top of existing rows."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402


def _backends(tiny_dir, device: str, max_context: int):
    from budgetllm.engine.paged.backend import PagedBackend

    loaded = LLM.from_pretrained(str(tiny_dir("qwen2", "adapter")), backend="reference", device=device,
                                 progress=False).loaded
    opts = dict(max_seqs=2, page_size=4, num_pages=2000, max_context=max_context)
    if device == "cpu":
        return (PagedBackend(loaded, cuda_graphs=False, emulate_graphs=True, **opts),
                PagedBackend(loaded, cuda_graphs=False, **opts))
    g, e = PagedBackend(loaded, **opts), PagedBackend(loaded, **opts)
    e.runner.prefill_graphs = None  # captured, not used: every chunk runs the eager prefill
    return g, e


@pytest.mark.parametrize("rule_kind", ["threshold", "window"])
def test_graph_body_equals_eager_prefill(tiny_dir, rule_kind):
    g, e = _backends(tiny_dir, "cpu", 128)
    _check(g, e, rule_kind, [16, 32, 64, 128], ((16, 16), (21, 32), (32, 32), (3, 16)))


@pytest.mark.gpu
@pytest.mark.parametrize("rule_kind", ["threshold", "window"])
def test_captured_prefill_graphs_equal_eager_prefill_gpu(tiny_dir, rule_kind):
    g, e = _backends(tiny_dir, "cuda", 512)
    _check(g, e, rule_kind, [16, 32, 64, 128, 192, 256, 384, 512], ((16, 16), (100, 128), (384, 384), (5, 16)))


def _check(g, e, rule_kind: str, buckets: list, chunks) -> None:
    from budgetllm.engine.eviction import THRESHOLD, WINDOW, RowRule
    from budgetllm.kernels.reference import read_row

    rule = RowRule(THRESHOLD, thr=0.0) if rule_kind == "threshold" else RowRule(WINDOW, sinks=2)
    try:
        pg = g.runner.prefill_graphs
        assert pg is not None and e.runner.prefill_graphs is None and pg.buckets == buckets
        gen = torch.Generator().manual_seed(7)
        p0 = 0
        free0 = [b.device_free_pages_now() for b in (g, e)]  # (the decode graphs' padding slots hold pages)
        for n, bucket in chunks:  # some fill their bucket exactly (an empty scratch chunk)
            assert pg.bucket_for(n) == bucket
            toks = torch.randint(5, 4000, (n,), generator=gen).tolist()
            outs = [b.runner.prefill([(0, toks, p0, rule)], [True], free_pages=10**6) for b in (g, e)]
            torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
            p0 += n
            for b in (g, e):
                assert int(b.runner.kv.seq_pos[0]) == p0
            taken = [f - b.device_free_pages_now() for f, b in zip(free0, (g, e), strict=True)]
            assert taken[0] == taken[1] > 0  # the scratch chunk gave back every page it took
        kg, ke = g.runner.kv, e.runner.kv
        assert torch.equal(kg.row_lens[:, 0], ke.row_lens[:, 0])
        evicted = 0
        for li in range(kg.block_tables.shape[0]):
            for h in range(kg.block_tables.shape[2]):
                a, b = read_row(kg, li, 0, h), read_row(ke, li, 0, h)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (li, h)
                torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(a[3], b[3], rtol=1e-5, atol=1e-5)
                evicted += p0 - int(kg.row_lens[li, 0, h])
        assert evicted > 0  # the rows were compressed: slots of flagged tokens were reused
        scratch = pg.scratch
        assert int(kg.seq_pos[scratch]) == 0 and bool((kg.row_lens[:, scratch] == 0).all())
    finally:
        g.close()
        e.close()
