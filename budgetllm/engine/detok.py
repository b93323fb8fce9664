"""Incremental detokenisation and the reasoning / answer split, with stop strings. Torch-free."""

from __future__ import annotations

from collections.abc import Callable


class IncrementalDecoder:
    """Decodes a growing list of token ids and returns only new, complete text (as vLLM does:
    decode a short tail twice instead of the whole sequence at every step)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.decode(self.ids[self._prefix : self._read])
        new_text = self.decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
            return delta
        return ""


def find_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string starts, or None."""
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def holdback(text: str, markers: list[str]) -> int:
    """How many trailing characters could still be the start of a marker (kept unsent).

    Only the last ``len(marker) - 1`` characters can matter, so the cost is O(marker length)
    whatever the length of ``text`` (a prefix-function pass over marker + tail)."""
    n = 0
    for s in markers:
        if len(s) > 1 and text:
            n = max(n, _border(s[:-1], text[-(len(s) - 1):]))
    return n


def _failure(pattern: str) -> list[int]:
    """KMP prefix function: fail[i] = length of the longest proper border of pattern[:i+1]."""
    fail = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i] = k
    return fail


def _border(prefix: str, tail: str) -> int:
    """Length of the longest suffix of ``tail`` that is a prefix of ``prefix``."""
    fail, k = _failure(prefix), 0
    for ch in tail:
        while k and (k == len(prefix) or ch != prefix[k]):
            k = fail[k - 1]
        if ch == prefix[k]:
            k += 1
    return k


class StopMatcher:
    """Streams text through the stop strings (one KMP automaton each): every character costs
    amortised O(1) per stop string, so a long answer or a long stop string costs no more per token.

    ``feed(text)`` returns the index (in all the text fed so far) where the earliest stop string
    starts, or None; ``partial`` is how many trailing characters may still start one (held back).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._fail = [_failure(s) for s in self.stops]
        self._state = [0] * len(self.stops)
        self.fed = 0

    @property
    def partial(self) -> int:
        return max(self._state, default=0)

    def feed(self, text: str) -> int | None:
        best = None
        for j, (stop, fail) in enumerate(zip(self.stops, self._fail, strict=True)):
            k = self._state[j]
            for i, ch in enumerate(text):
                while k and ch != stop[k]:
                    k = fail[k - 1]
                if ch == stop[k]:
                    k += 1
                if k == len(stop):
                    start = self.fed + i + 1 - len(stop)
                    best = start if best is None else min(best, start)
                    break
            self._state[j] = k
        self.fed += len(text)
        return best


class TextAssembler:
    """Turns generated text into reasoning and answer deltas.

    Reasoning runs until ``close_tag``; the answer starts after it (leading whitespace dropped).
    Stop strings apply to the answer only. Text that may be the start of a marker is held back.
    """

    def __init__(self, thinking: bool, close_tag: str, stops: list[str], open_tag: str = "<think>"):
        self.in_reasoning = thinking
        self.close_tag = close_tag
        self.open_tag = open_tag
        self.opened_by_model = False
        self.stops = [s for s in stops if s]
        self._matcher = StopMatcher(self.stops)
        self.reasoning = ""
        self.answer = ""
        self._pending = ""  # text not yet assigned to reasoning or answer
        self._sent_answer = 0
        self.stopped = False

    def feed(self, delta: str) -> list[tuple[str, str]]:
        """Returns [(kind, text)] with kind "reasoning" or "text"."""
        out: list[tuple[str, str]] = []
        self._pending += delta
        if self.in_reasoning:
            idx = self._pending.find(self.close_tag)
            if idx < 0:
                keep = holdback(self._pending, [self.close_tag])
                piece, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
                if piece:
                    self.reasoning += piece
                    out.append(("reasoning", piece))
                return out
            piece = self._pending[:idx]
            if piece:
                self.reasoning += piece
                out.append(("reasoning", piece))
            self._pending = self._pending[idx + len(self.close_tag) :].lstrip()
            self.in_reasoning = False
        if not self.answer and not self._pending.strip():
            self._pending = ""
            return out
        if not self.answer and not self.opened_by_model and self.open_tag:
            head = self._pending.lstrip()
            if head.startswith(self.open_tag):  # the model opens its own thinking block
                self.opened_by_model = True
                self.in_reasoning = True
                self._pending = head[len(self.open_tag):]
                return out + self.feed("")
            if self.open_tag.startswith(head):
                return out  # could still become the open tag: wait
        if not self.answer:
            self._pending = self._pending.lstrip()
        self.answer += self._pending
        cut = self._matcher.feed(self._pending)  # only the new text: O(its length) per stop string
        self._pending = ""
        if cut is not None:
            self.answer = self.answer[:cut]
            self.stopped = True
        limit = len(self.answer) if self.stopped else len(self.answer) - self._matcher.partial
        if limit > self._sent_answer:
            out.append(("text", self.answer[self._sent_answer : limit]))
            self._sent_answer = limit
        return out

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.in_reasoning and self._pending:
            self.reasoning += self._pending
            out.append(("reasoning", self._pending))
            self._pending = ""
        if len(self.answer) > self._sent_answer:
            out.append(("text", self.answer[self._sent_answer :]))
            self._sent_answer = len(self.answer)
        return out
