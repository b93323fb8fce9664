"""The thinking controller follows the model's think tags by token ids, multi-token tags included.

Torch-free: a fake tokenizer where "<think>" is 3 tokens and "</think>" is 3 other tokens.
"""

from __future__ import annotations

from budgetllm.engine.thinking import ThinkingController
from budgetllm.types import ThinkingConfig

VOCAB = {"<think>": [5, 6, 7], "</think>": [8, 9, 10], "</think>\n\n": [8, 9, 10, 11], "\n\n": [11]}


def encode(text: str) -> list[int]:
    return VOCAB.get(text, [20] * max(1, len(text) // 10))


def ctrl(budget, max_tokens=100, reserve=10) -> ThinkingController:
    return ThinkingController(budget, reserve, max_tokens, encode=encode, config=ThinkingConfig())


def test_a_close_tag_split_across_tokens_ends_the_block():
    c = ctrl(50)
    for t in [1, 2, 8, 9, 3, 8, 9]:  # a partial tag, broken by another token, is not a close
        assert c.observe(t) and c.phase == "thinking"
    c.observe(10)  # ... 8 9 10: the close tag
    assert c.phase == "answer" and c.reasoning_tokens == 8 and not c.forced_close
    c.observe(4)
    assert c.answer_tokens == 1 and c.next_forced() is None


def test_a_model_opened_block_at_the_answer_start_gets_the_budget():
    c = ctrl(None)
    assert c.phase == "answer"
    for t in [5, 6, 7]:
        c.observe(t)
    assert c.phase == "thinking" and c.reasoning_tokens == 3 and c.answer_tokens == 0
    assert c.budget == 90  # max_tokens - reserve
    for t in [1, 8, 9, 10]:
        c.observe(t)
    assert c.phase == "answer"


def test_open_tags_later_in_the_answer_or_with_budget_zero_do_not_open():
    c = ctrl(None)
    for t in [1, 2, 3, 4, 5, 6, 7]:
        c.observe(t)
    assert c.phase == "answer" and c.answer_tokens == 7
    z = ctrl(0)
    for t in [5, 6, 7]:
        z.observe(t)
    assert z.phase == "answer"


def test_budget_close_is_forced_by_the_controller_without_a_consumer():
    c = ctrl(12)
    fed = []
    while c.thinking:
        forced = c.next_forced()
        tok = forced if forced is not None else 1
        c.observe(tok)
        fed.append(tok)
    assert fed[-4:] == [8, 9, 10, 11] and c.forced_close and c.reasoning_tokens <= 12
    c.observe(5)  # no reopening after a forced close
    c.observe(6)
    c.observe(7)
    assert c.phase == "answer"


def test_steady_while_thinking_until_the_budget_close_is_one_token_away():
    """``steady`` (the paged engine's launch-ahead asks it) holds inside the block until the budget's
    close could start at the next token; then the forced tokens follow, and ``steady`` is False until
    the answer is under way. ``watch_ids`` names the close tag's last token while thinking only."""
    c = ctrl(20)
    handoff = len(c._handoff_ids) + len(c._close_ids)  # what the budget's close writes
    assert c.phase == "thinking" and c.watch_ids() == (10,)
    steady_at = []
    while c.next_forced() is None:
        steady_at.append((c.reasoning_tokens, c.steady()))
        c.observe(1)
    # steady exactly while even the token after the next cannot start the close
    assert steady_at == [(r, r + handoff + 1 < 20) for r, _ in steady_at]
    assert steady_at[0][1] and not steady_at[-1][1]
    while c.phase != "answer":  # the forced hand-off and close
        assert not c.steady()
        c.observe(c.next_forced())
    assert c.watch_ids() == () and c.reasoning_tokens == 20


def test_not_steady_when_the_model_closes_the_block_itself():
    c = ctrl(50)
    c.observe(1)
    assert c.steady() and 10 in c.watch_ids()
    for t in (8, 9, 10):
        c.observe(t)
    assert c.phase == "answer" and c.watch_ids() == () and not c.steady()  # the answer's first tokens
