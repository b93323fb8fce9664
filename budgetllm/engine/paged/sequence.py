"""Per-request state of the paged engine (torch-free, like nano-vllm's ``sequence.py``).

A :class:`Sequence` is what the scheduler and the block manager see of one request: the token ids
that must be in the KV cache, how many already are, its sequence slot, the pages it holds (as last
read back from the GPU) and how much KV it is expected to keep. The GPU-side truth (row lengths,
pages) lives in ``budgetllm.kernels.PagedKV``; the host mirrors it after every step.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

_ids = itertools.count()


class SeqStatus(Enum):
    WAITING = "waiting"  # queued (new, or preempted and waiting to be recomputed)
    RUNNING = "running"  # holds a sequence slot; prefilling or decoding
    FINISHED = "finished"  # ended (stop, length, cancelled, error); holds nothing


@dataclass
class Sequence:
    """One request as the scheduler sees it.

    token_ids: every token the model must have seen before the next sample (prompt + emitted tokens).
    num_cached: how many of them are in the KV cache (the slot's ``seq_pos`` on the GPU).
    expected_cr: the compression the request asked for; sizes admission (see BlockManager).
    max_new_tokens: the request's output limit (for the admission bound).
    """

    token_ids: list[int]
    max_new_tokens: int
    expected_cr: float = 1.0
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: SeqStatus = SeqStatus.WAITING
    slot: int | None = None
    num_cached: int = 0
    pages_held: int = 0  # read back from the GPU after each step
    live_entries: int = 0  # (layer, head, token) entries kept, read back likewise
    num_prompt: int = 0
    preemptions: int = 0
    keep_at: tuple = ()  # token counts (inside the prompt) where a state is kept too (prefix tree)
    reused: int = 0  # prompt tokens served from a kept cache state (the prefix tree) at admission
    prefill_overflows: int = 0  # prefills that ran the pool dry: later admissions use the dense bound
    cancelled: bool = False
    finish_reason: str | None = None
    payload: Any = None  # the backend's own per-request object (GenerationRequest, queues, ...)
    cache_key: Any = None  # what makes two caches of the same tokens equal (the eviction rule)

    def __post_init__(self) -> None:
        self.num_prompt = self.num_prompt or len(self.token_ids)
        if not self.token_ids:
            raise ValueError("a sequence needs at least one token")

    @property
    def num_pending(self) -> int:
        """Tokens still to be fed before the next sample (1 = a decode step, more = a prefill)."""
        return len(self.token_ids) - self.num_cached

    @property
    def is_decoding(self) -> bool:
        return self.status is SeqStatus.RUNNING and self.num_pending == 1

    @property
    def is_prefilling(self) -> bool:
        return self.status is SeqStatus.RUNNING and self.num_pending > 1

    @property
    def total_tokens(self) -> int:
        """The most tokens this sequence can reach (prompt + max_new_tokens)."""
        return self.num_prompt + self.max_new_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(int(token_id))


def expected_row_entries(tokens: int, window: int, cr: float) -> int:
    """Entries one (layer, KV head) row is expected to hold after ``tokens`` tokens.

    The last ``window + 1`` tokens are always kept (delayed eviction); of the older ones about
    1/CR survive. This is an expectation, not a bound: a row can keep more (the decisions are
    learned), which the engine handles by preempting (decode) or retrying with the dense bound
    (prefill).
    """
    w1 = window + 1
    return min(tokens, w1) + math.ceil(max(0, tokens - w1) / max(cr, 1.0))


def pages_for(entries: int, page_size: int) -> int:
    return -(-entries // page_size)
