"""The per-request side of a grammar: which tokens may come next, and the tokens that came.

A :class:`Constraint` wraps one xgrammar matcher. The engines call ``fill(bitmask, row)`` before
sampling an answer token (a packed int32 row of ceil(vocab/32) words: bit ``t`` set = token ``t``
allowed; it returns False when every token is allowed, so nothing needs applying) and ``accept``
after it. Thinking tokens are never shown to it: the constraint starts with the answer. A token the
grammar rejects (a dead end: nothing was allowed, or a forced token the grammar does not admit)
ends the request; ``error`` says why. ``close()`` drops the matcher (cancellation, end of the call);
an engine thread that still holds it finishes its current call on its own reference.

No torch import: the bitmask is whatever int32 CPU array the engine allocated (DLPack).
"""

from __future__ import annotations

from typing import Any


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


class Constraint:
    def __init__(self, matcher: Any, vocab_size: int, spec: Any = None):
        self._matcher = matcher
        self.vocab_size = vocab_size
        self.spec = spec
        self.error: str | None = None
        self.accepted = 0

    @property
    def closed(self) -> bool:
        return self._matcher is None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted."""
        m = self._matcher
        return m is not None and m.is_terminated()

    def fill(self, bitmask: Any, row: int = 0) -> bool:
        """Write the allowed next tokens into ``bitmask[row]``; False when all are allowed (or closed)."""
        m = self._matcher
        if m is None or self.error is not None:
            return False
        return bool(m.fill_next_token_bitmask(bitmask, row))

    def batch_matcher(self) -> Any:
        """The library matcher for a batched fill (xgrammar's ``BatchGrammarMatcher``), or None when
        this constraint no longer masks (closed or failed: every token allowed, as ``fill`` says)."""
        return None if self.error is not None else self._matcher

    def accept(self, token_id: int) -> bool:
        """Advance by one generated answer token; False (and ``error`` set) when the grammar rejects it."""
        m = self._matcher
        if m is None or self.error is not None:
            return self.error is None
        if token_id < 0:
            self.error = f"the grammar allows no token here (dead end after {self.accepted} tokens)"
            return False
        if m.is_terminated():
            self.error = f"token {token_id} after the grammar was complete"
            return False
        if not m.accept_token(int(token_id)):
            self.error = f"token {token_id} is not allowed by the grammar here (dead end after {self.accepted} tokens)"
            return False
        self.accepted += 1
        return True

    def close(self) -> None:
        self._matcher = None
