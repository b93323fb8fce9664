"""The thinking-budget controller of one request (docs/notes/budget.md §1.4–1.5). Torch-free.

Phases: "thinking" (reasoning tokens are counted from the open tag in the prompt), "closing" (the
budget is spent: the hand-off text and the close tag are fed as forced tokens), "answer" (the
model writes its answer; it may not reopen a thinking block). The reasoning count includes the
forced hand-off and close tag, so it never exceeds the budget; the answer keeps its own reserve.
The close starts early enough for both to fit; a budget too small for the hand-off gets the close
tag alone, and an EOS inside the block closes it with the tag alone (nothing was cut off).

The controller watches the model's own think tags by token ids (a multi-token tag is matched as a
token sequence): the close tag ends the thinking phase, an open tag at the very start of the answer
opens one (templates that let the model choose, e.g. Qwen3). The engine applies it per token, so
no consumer is ever waited for, and both backends run the same controller token by token.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from budgetllm.types import ThinkingConfig


@dataclass
class ThinkingController:
    budget: int | None  # None: no thinking phase at all
    answer_reserve: int
    max_tokens: int
    encode: Callable[[str], list[int]]
    config: ThinkingConfig = field(default_factory=ThinkingConfig)
    phase: str = "answer"
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    forced_close: bool = False
    _forced: deque = field(default_factory=deque)
    _close_ids: list[int] = field(default_factory=list)
    _handoff_ids: list[int] = field(default_factory=list)
    _reasoning_text: str = ""
    # Tokens written at the start of the answer (e.g. a forced tool-call opening for tool_choice).
    answer_prefix: list[int] = field(default_factory=list)
    _requested: int | None = None  # the budget asked for (a block the model opens itself gets it)
    _open_tag_ids: tuple = ()
    _close_tag_ids: tuple = ()
    _recent: deque = field(default_factory=deque)  # the last tokens, for matching tags

    def __post_init__(self) -> None:
        self._requested = self.budget
        self._open_tag_ids = tuple(self.encode(self.config.open_tag.strip())) if self.config.open_tag.strip() else ()
        self._close_tag_ids = tuple(self.encode(self.config.close_tag.strip()))
        self._recent = deque(maxlen=max(len(self._open_tag_ids), len(self._close_tag_ids), 1))
        if self.budget is not None and self.budget > 0:
            self.phase = "thinking"
            self._close_ids = self.encode(self.config.close_tag + self.config.after_close)
            self._handoff_ids = self.encode(self.config.handoff)
            # The plan arrives fitted (budgetllm.policy.fit): the answer reserve holds and the
            # budget can hold the close tag. Nothing here fits it again.
            assert self.budget + self.answer_reserve <= self.max_tokens, "plan not fitted: budget + reserve > max_tokens"
            assert self.budget >= len(self._close_ids), "plan not fitted: the budget cannot hold the close tag"

    @property
    def thinking(self) -> bool:
        return self.phase in ("thinking", "closing")

    def prompt_suffix(self) -> str:
        """Text to append to the prompt so the model starts inside a thinking block."""
        return self.config.open_tag if self.phase == "thinking" else ""

    def next_forced(self) -> int | None:
        """The token to feed instead of sampling: the closing sequence, or the answer prefix."""
        if self.phase == "thinking" and self.reasoning_tokens + self._closing_length() >= self.budget:
            self._begin_close(with_handoff=True)
        if self._forced:
            return self._forced[0]
        if self.phase == "answer" and self.answer_prefix and self.answer_tokens < len(self.answer_prefix):
            return self.answer_prefix[self.answer_tokens]
        return None

    def _closing_length(self) -> int:
        """Tokens a budget close writes: the hand-off and the close tag, or the tag alone when the
        budget cannot hold both (it always holds the tag: the plan is fitted so)."""
        both = len(self._handoff_ids) + len(self._close_ids)
        return both if self.budget >= both else len(self._close_ids)

    def _begin_close(self, with_handoff: bool) -> None:
        self.phase = "closing"
        self.forced_close = True
        room = self.budget - self.reasoning_tokens - len(self._close_ids)
        handoff = self._handoff_ids if with_handoff and room >= len(self._handoff_ids) else []
        self._forced = deque(handoff + self._close_ids)

    def _ends_with(self, tag: tuple) -> bool:
        n = len(tag)
        return 0 < n <= len(self._recent) and tuple(self._recent)[-n:] == tag

    def observe(self, token_id: int, text_so_far: str | None = None, is_eos: bool = False) -> bool:
        """Record a generated token. Returns False when the token must not be emitted (an EOS
        inside the thinking block: the block is closed gracefully instead)."""
        if not is_eos:
            self._recent.append(int(token_id))
        if self.phase == "closing":
            self._forced.popleft()
            self.reasoning_tokens += 1
            if not self._forced:
                self.phase = "answer"
            return True
        if self.phase == "thinking":
            if is_eos:  # ending inside the block would leave no answer: close it properly
                self._begin_close(with_handoff=False)
                return False
            self.reasoning_tokens += 1
            if self._ends_with(self._close_tag_ids) or (
                    text_so_far is not None and self.config.close_tag in text_so_far):
                self.phase = "answer"  # the model closed the block itself
            return True
        self.answer_tokens += 1
        if (self._requested != 0 and self.answer_tokens <= len(self._open_tag_ids) + 2 and not self.forced_close
                and self._ends_with(self._open_tag_ids) and self.answer_tokens > len(self.answer_prefix)):
            self.model_opened(self._requested)
        return True

    def model_opened(self, budget: int | None) -> None:
        """The model opened a thinking block itself (templates that let it, e.g. Qwen3): count from here."""
        if self.phase == "answer" and self.answer_tokens <= len(self._open_tag_ids) + 2 and not self.forced_close:
            self.reasoning_tokens += self.answer_tokens  # the open tag itself is reasoning
            self.answer_tokens = 0
            room = self.max_tokens - self.answer_reserve  # what the fitted plan leaves for thinking
            assert budget is None or budget <= room, "plan not fitted: budget + reserve > max_tokens"
            self.budget = room if budget is None else budget
            if not self._close_ids:
                self._close_ids = self.encode(self.config.close_tag + self.config.after_close)
                self._handoff_ids = self.encode(self.config.handoff)
            self.phase = "thinking"

    def model_closed(self) -> None:
        """The model wrote the close tag itself: the answer phase starts."""
        if self.phase == "thinking":
            self.phase = "answer"

    def answer_budget_left(self) -> int:
        return self.max_tokens - self.reasoning_tokens - self.answer_tokens

    def steady(self) -> bool:
        """:meth:`steady_answer` or :meth:`steady_thinking` (the paged engine's launch-ahead asks this)."""
        return self.steady_answer() or self.steady_thinking()

    def steady_thinking(self) -> bool:
        """Inside the thinking block, nothing forced, and the budget's close cannot start at the next
        token: that token is fed as sampled and leaves the sampling masks as they are, unless it is an
        EOS or completes the close tag (:meth:`watch_ids`: the engine voids a step launched ahead then)."""
        return (self.phase == "thinking" and not self._forced and self.budget is not None
                and self.reasoning_tokens + self._closing_length() + 1 < self.budget
                and self.answer_budget_left() >= 2)

    def watch_ids(self) -> tuple[int, ...]:
        """Token ids whose sampling changes the phase (the close tag's last token while thinking)."""
        return self._close_tag_ids[-1:] if self.phase == "thinking" else ()

    def steady_answer(self) -> bool:
        """The next token is sampled, not forced, and cannot change the phase or end the answer: in the
        answer phase, nothing forced, past the first tokens where the model may open a block, and at
        least two tokens of answer budget left (the paged engine's launch-ahead asks this)."""
        return (self.phase == "answer" and not self._forced and self.answer_budget_left() >= 2
                and self.answer_tokens >= max(len(self.answer_prefix), len(self._open_tag_ids) + 2))
