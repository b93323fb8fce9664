"""The engine applies thinking budgets and the model's own close tag by itself: paged == reference.

The tiny random model never writes "</think>", so the test makes the close tag a pair of tokens the
model does write inside its thinking block (found with a first greedy run): the model then closes
the block itself, with the tag split across two tokens, and both backends must produce the same
tokens, reasoning count and forced-close flag, with no consumer pacing the paged engine (CPU,
Triton interpreter).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from budgetllm import LLM  # noqa: E402
from budgetllm.types import ThinkingConfig  # noqa: E402
from tests.engine.enginelib import run_concurrently  # noqa: E402

PROMPT = "Think about the sea."


def _two_token_tag(llm: LLM, tokens: list[int]) -> tuple[str, int]:
    """A two-token string the model wrote (from the 2nd token on) that encodes back to the same ids."""
    for i in range(1, len(tokens) - 1):
        text = llm.prompter.decode(tokens[i:i + 2])
        if text.strip() == text and text and llm.prompter.encode_text(text) == tokens[i:i + 2] and \
                tokens[i:i + 2] not in [tokens[j:j + 2] for j in range(i)]:
            return text, i + 2
    raise AssertionError("no two-token tag found")


def test_model_closed_and_budget_closed_blocks_match_the_reference(tiny_dir):
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.engine.reference.backend import ReferenceBackend

    ref = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed")), backend="reference", device="cpu", progress=False)
    first = ref.generate(PROMPT, compression=8, max_tokens=16, thinking_budget=12)
    tag, at = _two_token_tag(ref, first.token_ids[:8])
    cfg = ThinkingConfig(close_tag=tag, after_close="")
    scratch = LLM(ref.loaded, ReferenceBackend(ref.loaded, prefix_cache=False), thinking=cfg)
    backend = PagedBackend(ref.loaded, max_seqs=3, page_size=4, num_pages=300, cuda_graphs=False, max_context=128)
    paged = LLM(ref.loaded, backend, thinking=cfg)
    try:
        opts = [dict(thinking_budget=12), dict(thinking_budget=at - 1), dict(thinking_budget=None)]
        want = [scratch.generate(PROMPT, compression=8, max_tokens=16, **o) for o in opts]
        got, errors = run_concurrently(lambda i: paged.generate(PROMPT, compression=8, max_tokens=16, **opts[i]), 3)
        assert not errors, errors
        for i in range(3):
            assert got[i].token_ids == want[i].token_ids
            assert got[i].usage.reasoning_tokens == want[i].usage.reasoning_tokens
            assert got[i].usage.forced_close == want[i].usage.forced_close
        # budget 12: the model closes its block itself after `at` tokens (the tag's two tokens included)
        assert want[0].usage.reasoning_tokens == at and not want[0].usage.forced_close
        assert want[1].usage.forced_close and want[1].usage.reasoning_tokens <= at - 1
    finally:
        backend.close()


def test_a_spent_budget_writes_the_handoff_then_the_close_in_both_backends(tiny_dir):
    """The budget close is the hand-off text, then the close tag, counted inside the budget: the
    same tokens on the reference and the paged backend (the tiny model never closes by itself)."""
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.engine.reference.backend import ReferenceBackend

    ref = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed")), backend="reference", device="cpu", progress=False)
    cfg = ThinkingConfig(handoff="\nTime is up, so I answer now.\n")
    scratch = LLM(ref.loaded, ReferenceBackend(ref.loaded, prefix_cache=False), thinking=cfg)
    backend = PagedBackend(ref.loaded, max_seqs=2, page_size=4, num_pages=200, cuda_graphs=False, max_context=128)
    paged = LLM(ref.loaded, backend, thinking=cfg)
    handoff = scratch.prompter.encode_text(cfg.handoff)
    close = scratch.prompter.encode_text(cfg.close_tag + cfg.after_close)
    budget = len(handoff) + len(close) + 5  # room for 5 of the model's own reasoning tokens
    try:
        kw = dict(compression=8, max_tokens=budget + 6, thinking_budget=budget)
        want = scratch.generate(PROMPT, **kw)
        got = paged.generate(PROMPT, **kw)
        assert got.token_ids == want.token_ids
        assert want.usage.forced_close and want.usage.reasoning_tokens == budget
        assert want.token_ids[5:budget] == handoff + close
        assert want.reasoning.rstrip().endswith(cfg.handoff.strip()) and cfg.handoff.strip() not in want.text
    finally:
        backend.close()
