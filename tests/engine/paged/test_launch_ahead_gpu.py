"""Launch-ahead decode on the GPU with CUDA graphs (tiny random model, bf16): the same requests with
``launch_ahead`` on and off give identical tokens, finish reasons and usage, greedy and seeded, with
rows ending by EOS and by max_tokens at different steps; steps really ran ahead, some void; every
page comes back."""

from __future__ import annotations

import pytest
import torch

from budgetllm import LLM
from budgetllm.types import SamplingParams
from tests.engine.enginelib import all_pages_back, request, run_batch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_launch_ahead_equals_lockstep_with_graphs(tiny_dir, sampled):
    from budgetllm.engine.paged.backend import PagedBackend

    ref = LLM.from_pretrained(str(tiny_dir("llama", "adapter")), backend="reference", device="cuda", progress=False,
                              dtype=torch.bfloat16)
    on, off = (PagedBackend(ref.loaded, launch_ahead=a, max_seqs=8, page_size=16, num_pages=2000, max_context=512,
                            seed=1234) for a in (True, False))
    assert on.runner.graphs is not None and on.runner.graphs.graphs  # real CUDA graphs
    params = SamplingParams(temperature=0.9, top_p=0.95) if sampled else SamplingParams()
    prompts = [[5, 9, 14, 3, 22, 7], [8, 8, 31, 2], [40, 11, 17, 6, 9], [3, 1, 4, 1, 5, 9, 2, 6]]

    def make(eos=None):
        reqs = [request(ref.loaded, p, 8 if i % 2 else 1, m)
                for i, (p, m) in enumerate(zip(prompts, (48, 20, 48, 33), strict=True))]
        for r in reqs:
            r.sampling = params
        if eos is not None:
            reqs[0].eos_ids = {eos}
        return reqs

    try:
        first = run_batch(off, make())[0][0]
        # a token first emitted late (a tiny random model may repeat itself: then any fresh one)
        fresh = [(j, t) for j, t in enumerate(first) if j >= 1 and t not in first[:j]]
        eos = next((t for j, t in fresh if j >= 10), fresh[0][1])
        a = run_batch(off, make(eos))
        b = run_batch(on, make(eos))
        assert b == a
        assert [x[1] for x in a] == ["stop", "length", "length", "length"] and len(a[1][0]) == 20
        assert on.ahead_counts["launched"] > 20 and on.ahead_counts["void"] >= 1
        assert off.ahead_counts["launched"] == 0
        all_pages_back(on)
        all_pages_back(off)
    finally:
        on.close()
        off.close()
