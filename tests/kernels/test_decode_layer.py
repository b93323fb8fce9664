"""The small-batch decode path (engine/paged/decode_layer.py: fused skinny GEMMs) against the runner's
cuBLAS/torch path, on tiny float32 models of every family and DMS variant, in the interpreter.

Two runners over the same weights prefill the same prompts, then decode several steps side by side,
each feeding its own greedy token: the logits must agree to the K-sum order (float32: 1e-5 relative)
and the KV state (row lengths, i.e. every eviction decision) must be identical. Rows use threshold
decisions (DMS logits), forced eviction and dense rows in one batch.
"""

import math

import pytest
import torch

from budgetllm.engine.paged.model_runner import ModelRunner, RunnerConfig
from budgetllm.engine.rules import DENSE, FORCED, THRESHOLD, RowRule

CASES = [("llama", None), ("qwen2", "adapter"), ("qwen3", "borrowed")]


def _runner(loaded, fast: bool) -> ModelRunner:
    return ModelRunner(loaded, RunnerConfig(max_seqs=3, page_size=4, num_pages=120, max_context=64, window=4,
                                            cuda_graphs=False, small_batch_gemv=fast))


@pytest.mark.parametrize(("arch", "dms"), CASES)
def test_small_batch_path_equals_the_cublas_path(tiny_llm, arch, dms):
    loaded = tiny_llm(arch, dms).loaded
    fast, slow = _runner(loaded, True), _runner(loaded, False)
    assert fast.fast is not None and slow.fast is None
    thr_rule = RowRule(THRESHOLD, thr=0.0) if dms else RowRule(FORCED, period=3)
    rules = [thr_rule, RowRule(FORCED, period=2), RowRule(DENSE, thr=math.inf)]
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (9, 5, 12)]
    for r in (fast, slow):
        for s, (toks, rule) in enumerate(zip(prompts, rules, strict=True)):
            r.prefill([(s, toks, 0, rule)], [False])
    toks_f = toks_s = [7, 8, 9]
    for _ in range(5):
        lf = fast.decode([(s, t, rules[s]) for s, t in enumerate(toks_f)]).clone()
        ls = slow.decode([(s, t, rules[s]) for s, t in enumerate(toks_s)]).clone()
        assert not torch.isnan(lf).any()
        assert float((lf - ls).norm() / ls.norm()) < 1e-5
        assert torch.equal(fast.kv.row_lens, slow.kv.row_lens)
        toks_f, toks_s = lf.argmax(-1).tolist(), ls.argmax(-1).tolist()
        assert toks_f == toks_s
    assert int(fast.kv.row_lens[:, :3].sum()) < int(fast.kv.seq_pos[:3].sum()) * fast.kv.row_lens.shape[0] * fast.model.H


def test_graph_buckets_choose_the_path_by_batch_size(tiny_llm):
    """Buckets above ``max_rows`` (4) keep the cuBLAS path (``DecodeLayers.takes``)."""
    r = _runner(tiny_llm("llama").loaded, True)
    assert r.fast.takes(1) and r.fast.takes(4)
    assert not r.fast.takes(5) and not r.fast.takes(0)
