"""Conversation reuse through ``LLM`` (chat template) on both backends, exact against a from-scratch run.

Each turn appends the previous answer (re-rendered by the template: cut at max_tokens, thinking
stripped) and a new user message. From turn 2 on the history comes from a kept state (the previous
prompt's end, or the state kept before its thinking open tag), and the tokens and KV accounting
equal a fresh reference run of the whole prompt. An edited earlier turn reuses less, never wrong.
The paged backend runs on the CPU (Triton interpreter).
"""

from __future__ import annotations

import os
import threading

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from budgetllm import LLM  # noqa: E402


@pytest.fixture(scope="module")
def llms(tiny_dir):
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.engine.reference.backend import ReferenceBackend

    ref = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed")), backend="reference", device="cpu", progress=False)
    scratch = LLM(ref.loaded, ReferenceBackend(ref.loaded, prefix_cache=False))
    backend = PagedBackend(ref.loaded, max_seqs=2, page_size=4, num_pages=500, cuda_graphs=False,
                           max_context=256, max_prefill_tokens=24)
    # CUDA-graph batching emulated: small chunks run through the padded prefill-graph body
    graphs = PagedBackend(ref.loaded, max_seqs=2, page_size=4, num_pages=500, cuda_graphs=False,
                          emulate_graphs=True, max_context=256, max_prefill_tokens=24)
    yield ref, scratch, LLM(ref.loaded, backend), LLM(ref.loaded, graphs)
    backend.close()
    graphs.close()


def _same(got, want) -> None:
    assert got.token_ids == want.token_ids
    assert (got.usage.reasoning_tokens, got.finish_reason) == (want.usage.reasoning_tokens, want.finish_reason)
    a, b = got.usage.kv, want.usage.kv
    assert (a.live_bytes, a.logical_bytes, a.evicted_tokens, a.kv_bytes_read) == \
        (b.live_bytes, b.logical_bytes, b.evicted_tokens, b.kv_bytes_read)


@pytest.mark.parametrize("which,thinking", [("reference", None), ("paged", None), ("paged", 4), ("graphs", 4)])
def test_multi_turn_reuses_the_history_exactly(llms, which, thinking):
    ref, scratch, paged, graphs = llms
    llm = {"reference": ref, "paged": paged, "graphs": graphs}[which]
    msgs = [{"role": "system", "content": f"You are a terse agent ({which}, {thinking})."}]
    history = 0
    for turn in range(3):
        msgs.append({"role": "user", "content": f"Step {turn}: call the tool for item {turn}."})
        opts = dict(compression=8, max_tokens=6, thinking_budget=thinking)
        got, want = llm.generate(msgs, **opts), scratch.generate(msgs, **opts)
        _same(got, want)
        if turn:
            assert got.usage.cached_tokens >= history, "the previous turn's history was prefilled again"
        else:
            assert got.usage.cached_tokens == 0
        suffix = len(llm.prompter.encode_text(llm.thinking_config.open_tag)) if thinking else 0
        history = len(got.prompt_token_ids) - suffix  # the thinking open tag is not history
        msgs.append({"role": "assistant", "content": got.text})  # reasoning stripped, cut at max_tokens
    if which != "reference":
        stats = llm.pool_stats()
        assert stats["prefix_pages"] > 0 and stats["parked"] >= 2


@pytest.mark.parametrize("which", ["reference", "paged"])
def test_an_edited_earlier_turn_reuses_less_and_stays_exact(llms, which):
    """Reuse points are kept states, never truncations: editing turn 2's message falls back to turn
    1's states; editing the first message (no state ends inside the system prompt) reuses nothing."""
    ref, scratch, paged, _ = llms
    llm = ref if which == "reference" else paged
    opts = dict(compression=8, max_tokens=4)
    base = [{"role": "system", "content": f"Edits ({which})."}, {"role": "user", "content": "First question here."}]
    first = llm.generate(base, **opts)
    turn2 = base + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Second."}]
    second = llm.generate(turn2, **opts)
    turn3 = turn2 + [{"role": "assistant", "content": second.text}, {"role": "user", "content": "Third."}]
    full = llm.generate(turn3, **opts)
    edited2 = turn2[:3] + [{"role": "user", "content": "Second, edited."}] + turn3[4:]
    edited1 = [base[0], {"role": "user", "content": "First question, edited."}] + turn3[2:]
    got2, got1 = llm.generate(edited2, **opts), llm.generate(edited1, **opts)
    _same(got2, scratch.generate(edited2, **opts))
    _same(got1, scratch.generate(edited1, **opts))
    assert len(first.prompt_token_ids) <= got2.usage.cached_tokens < full.usage.cached_tokens
    assert got1.usage.cached_tokens == 0


def test_concurrent_branches_share_one_kept_state(llms):
    """Two follow-ups of one kept state run at once: each starts from its own copy-on-write twin."""
    from tests.engine.enginelib import run_concurrently

    ref, scratch, paged, _ = llms
    base = [{"role": "system", "content": "Branches."}, {"role": "user", "content": "Pick a tool."}]
    paged.generate(base, compression=8, max_tokens=3)
    branches = [base + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": f"Branch {i}."}]
                for i in range(2)]
    got, errors = run_concurrently(lambda i: paged.generate(branches[i], compression=8, max_tokens=5), 2)
    assert not errors, errors
    for i in range(2):
        _same(got[i], scratch.generate(branches[i], compression=8, max_tokens=5))
        assert got[i].usage.cached_tokens > 0


def _every_page_back_after_clearing(backend):
    """Clear the kept states; then every page is free on the host and the device, no reference left."""
    backend.clear_prefix_cache()
    for _ in range(200):
        if backend.pool_stats()["parked"] == 0:
            break
        threading.Event().wait(0.02)
    threading.Event().wait(0.1)
    total = backend.pool_stats()["pages_total"]
    assert backend.pool_stats()["pages_free"] == total == backend.device_free_pages_now()
    assert int(backend.runner.refs.abs().sum()) == 0


def test_clearing_the_kept_states_returns_every_page(llms):
    """Clearing the kept states returns every page on the device (no page leaked or freed twice; pool
    pressure itself: test_paged_cpu.py::test_concurrent_requests_in_a_tiny_pool_all_finish)."""
    for llm in llms[2:]:
        _every_page_back_after_clearing(llm.backend)


def test_concurrent_prompts_with_one_system_prompt_stay_exact(llms):
    """Two calls with the same long system prompt at once (the second may wait for the first one's
    state at their common prefix and continue from a twin, engine/scheduler.py): both equal a
    from-scratch run, and every page comes back once the kept states are cleared."""
    from tests.engine.enginelib import run_concurrently

    ref, scratch, paged, _ = llms
    system = {"role": "system", "content": "Shared rules for every tool call: " + "be brief and exact; " * 6}
    msgs = [[system, {"role": "user", "content": f"Task {i}."}] for i in range(2)]
    got, errors = run_concurrently(lambda i: paged.generate(msgs[i], compression=8, max_tokens=4), 2)
    assert not errors, errors
    for i in range(2):
        _same(got[i], scratch.generate(msgs[i], compression=8, max_tokens=4))
    _every_page_back_after_clearing(paged.backend)
