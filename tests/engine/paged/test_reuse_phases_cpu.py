"""The reuse path's phases on the paged engine (CPU, kernels in the interpreter): a reused turn is
matched, forked, scheduled, launched and read in that order, its first token reaches the caller
before its prompt-end state is kept (the fork for the next turn is off the time to first token), and
the tokens equal a from-scratch run; a 1-token call keeps its state with its slot (no fork)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

from tests.engine.enginelib import request  # noqa: E402

ORDER = ["matched", "forked", "scheduled", "launched", "read", "delivered", "kept"]


def test_reused_turn_phases_in_order_and_exact(tiny_dir):
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.engine.reference.backend import ReferenceBackend
    from budgetllm.models.loading import load_model

    loaded = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", dtype=torch.float32, progress=False)
    backend = PagedBackend(loaded, max_seqs=2, page_size=4, num_pages=200, cuda_graphs=False, max_context=256,
                           max_prefill_tokens=64)
    try:
        prompt = list(range(1000, 1030))
        r1 = request(loaded, prompt, 8, 4)
        answer = [s.token_id for s in backend.run(r1) if s.finished is None]
        assert r1.cached_tokens == 0 and "matched" not in r1.phases and "kept" in r1.phases
        prompt2 = prompt + answer + list(range(2000, 2010))
        r2 = request(loaded, prompt2, 8, 4)
        got = [s.token_id for s in backend.run(r2) if s.finished is None]
        expected = [s.token_id for s in ReferenceBackend(loaded, prefix_cache=False).run(request(loaded, prompt2, 8, 4))
                    if s.finished is None]
        assert got == expected and r2.cached_tokens > 0
        times = [r2.phases[k] for k in ORDER]
        assert times == sorted(times) and times[0] > 0, r2.phases
        assert r2.prefill_seconds <= r2.phases["delivered"] <= r2.phases["kept"]
        # a 1-token call on top: it ends in the step that cached its prompt, its slot becomes the kept state
        prompt3 = prompt2 + got + [3000, 3001]
        r3 = request(loaded, prompt3, 8, 1)
        assert len([s for s in backend.run(r3) if s.finished is None]) == 1
        assert r3.cached_tokens > 0 and "delivered" in r3.phases and "kept" not in r3.phases
        assert any(e.length == len(prompt3) for e in backend.sched.prefix.entries())
    finally:
        backend.close()
