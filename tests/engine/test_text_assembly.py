"""Reasoning / answer split, stop strings and held-back markers, on hand-made deltas (torch-free)."""

from __future__ import annotations

from budgetllm.engine.detok import IncrementalDecoder, TextAssembler, holdback
from budgetllm.engine.thinking import ThinkingController


def run(asm: TextAssembler, deltas: list[str]) -> tuple[str, str]:
    out = [p for d in deltas for p in asm.feed(d)] + asm.flush()
    return "".join(t for k, t in out if k == "reasoning"), "".join(t for k, t in out if k == "text")


def test_split_at_close_tag_across_deltas():
    r, a = run(TextAssembler(True, "</think>", []), ["I think", " so.</th", "ink>\n\n", "Yes."])
    assert r == "I think so." and a == "Yes."


def test_model_opened_block_is_reasoning():
    asm = TextAssembler(False, "</think>", [], open_tag="<think>")
    r, a = run(asm, ["<th", "ink>\nhmm", "</think>", "\n\n42"])
    assert asm.opened_by_model and r == "\nhmm" and a == "42"


def test_stop_string_split_over_deltas_is_never_sent():
    asm = TextAssembler(False, "</think>", ["STOP"], open_tag="")
    sent = [p for d in ["hello ST", "OP world"] for p in asm.feed(d)]
    assert "".join(t for _, t in sent) == "hello " and asm.stopped and asm.answer == "hello "


def test_holdback_counts_marker_prefixes():
    assert holdback("abc</th", ["</think>"]) == 4 and holdback("abc", ["</think>"]) == 0


def test_incremental_decoder_waits_for_complete_utf8():
    table = {(1,): "a", (1, 2): "a\ufffd", (1, 2, 3): "aé"}
    dec = IncrementalDecoder(lambda ids: table.get(tuple(ids), "") if ids else "")
    assert [dec.push(1), dec.push(2), dec.push(3)] == ["a", "", "é"]


def test_controller_model_opened_counts_from_open_tag():
    c = ThinkingController(None, 4, 20, encode=lambda s: [0, 0])
    c.observe(5)  # "<think>" as an answer token, then the assembler notices
    c.model_opened(8)
    assert c.thinking and c.reasoning_tokens == 1 and c.budget == 8
