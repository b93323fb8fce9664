"""The prefill graphs' padded body (emulated on the CPU: the same body runs eagerly) against the eager
prefill, chunk by chunk on one sequence: the same logits, the same rows (positions, flags, K/V), the
same positions and free pages (the padding scratch chunk gives back every page it took), including a
chunk that fills its bucket exactly (an empty scratch chunk) and chunks on top of existing rows."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return LLM.from_pretrained(str(tiny_dir("qwen2", "adapter")), backend="reference", device="cpu",
                               progress=False).loaded


def _runner(loaded, graphs: bool):
    from budgetllm.engine.paged.backend import PagedBackend

    return PagedBackend(loaded, max_seqs=2, page_size=4, num_pages=600, cuda_graphs=False, emulate_graphs=graphs,
                        max_context=128)


@pytest.mark.parametrize("rule_kind", ["threshold", "window"])
def test_graph_body_equals_eager_prefill(loaded, rule_kind):
    from budgetllm.engine.eviction import THRESHOLD, WINDOW, RowRule
    from budgetllm.kernels.reference import read_row

    rule = RowRule(THRESHOLD, thr=0.0) if rule_kind == "threshold" else RowRule(WINDOW, sinks=2)
    g, e = _runner(loaded, True), _runner(loaded, False)
    try:
        pg = g.runner.prefill_graphs
        assert pg is not None and e.runner.prefill_graphs is None and pg.buckets == [16, 32, 64, 128]
        gen = torch.Generator().manual_seed(7)
        p0 = 0
        free0 = [b.device_free_pages_now() for b in (g, e)]  # (the decode graphs' padding slots hold pages)
        for n, bucket in ((16, 16), (21, 32), (32, 32), (3, 16)):  # 16 and 32 fill their bucket exactly
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
