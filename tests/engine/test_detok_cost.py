"""Stop strings: the streamed matcher against a naive reference, and its cost per token.

The cost is counted in executed lines of ``engine/detok.py`` (sys.settrace), not in seconds, so the
test does not depend on the machine. Before the fix, holding back a possible stop prefix tried
every prefix length of every stop string on every token (O(stop length) lines per token, whatever
the delta), and the stop search re-scanned the whole answer.
"""

from __future__ import annotations

import random
import sys

from hypothesis import example, given, settings
from hypothesis import strategies as st

from budgetllm.engine import detok
from budgetllm.engine.detok import TextAssembler, holdback


def naive_holdback(text: str, markers: list[str]) -> int:
    return max([k for s in markers for k in range(1, len(s)) if text.endswith(s[:k])] + [0])


def naive_answer(deltas: list[str], stops: list[str]) -> tuple[str, bool]:
    """The engine's semantics: generation stops at the first delta after which the text so far holds a
    stop string (a longer stop that could still complete later never gets the tokens to do so); the
    answer ends where the earliest-starting stop found then starts."""
    text = ""
    for d in deltas:
        text += d
        hits = [i for s in stops if (i := text.find(s)) >= 0]
        if hits:
            return text[: min(hits)], True
    return text, False


def stream(stops: list[str], deltas: list[str]) -> tuple[TextAssembler, str, list[str]]:
    asm = TextAssembler(False, "</think>", stops, open_tag="")
    sent, pieces = [], []
    for d in deltas:
        out = asm.feed(d)
        sent += [t for _, t in out]
        pieces.append("".join(sent))
        if asm.stopped:
            break
    sent += [t for _, t in asm.flush()]
    return asm, "".join(sent), pieces


@settings(max_examples=300, deadline=None)
@given(text=st.text("abz", max_size=40), stops=st.lists(st.text("abz", min_size=1, max_size=5), max_size=4),
       cuts=st.lists(st.integers(0, 40), max_size=8))
@example(text="baa", stops=["a", "baa"], cuts=[2])  # "a" completes after "ba": the stream stops there
def test_streamed_stops_equal_the_naive_reference(text, stops, cuts):
    text = text.lstrip()
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    asm, sent, pieces = stream(stops, deltas)
    want, stopped = naive_answer(deltas, stops)
    assert asm.answer == want and sent == want and asm.stopped == stopped
    for p in pieces:  # nothing sent while it could still begin a stop string
        assert want.startswith(p)


@settings(max_examples=200, deadline=None)
@given(text=st.text("ab", max_size=30), markers=st.lists(st.text("ab", min_size=1, max_size=8), max_size=3))
def test_holdback_equals_the_naive_reference(text, markers):
    assert holdback(text, markers) == naive_holdback(text, markers)


def test_matcher_reports_the_earliest_start_across_stops():
    from budgetllm.engine.detok import StopMatcher

    m = StopMatcher(["bcdef", "cd"])
    assert m.feed("abc") is None and m.partial == 2  # "bc" may begin "bcdef"
    assert m.feed("def") == 1  # "cd" ends first, but "bcdef" starts earlier: the earliest start wins
    assert StopMatcher(["xyz"]).feed("axyzxyz") == 1


def lines_in_detok(fn) -> int:
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != detok.__file__:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def cost_per_char(stop_len: int, tokens: int) -> float:
    rng = random.Random(0)
    # Answer text that keeps starting the stop strings and failing (the worst case for a naive scan).
    deltas = ["zq" * rng.randint(1, 3) + rng.choice("xy ") for _ in range(tokens)]
    stops = ["zq" * (stop_len // 2)] * 16
    chars = sum(map(len, deltas))
    lines = lines_in_detok(lambda: stream(stops, deltas))
    return lines / chars / len(stops)


def test_stop_cost_per_character_does_not_grow_with_stop_or_answer_length():
    short = cost_per_char(stop_len=8, tokens=100)
    long_stop = cost_per_char(stop_len=1000, tokens=100)
    long_answer = cost_per_char(stop_len=1000, tokens=400)
    assert long_stop < 2 * short + 10, (short, long_stop)
    assert long_answer < 1.2 * long_stop + 1, (long_stop, long_answer)
    assert long_answer < 20  # a handful of lines per character and stop string
