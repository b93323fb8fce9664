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
    """How many trailing characters could still be the start of a marker (kept unsent)."""
    n = 0
    for s in markers:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n


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
        self._pending = ""
        cut = find_stop(self.answer, self.stops)
        if cut is not None:
            self.answer = self.answer[:cut]
            self.stopped = True
        limit = len(self.answer) if self.stopped else len(self.answer) - holdback(self.answer, self.stops)
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
