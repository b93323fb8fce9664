"""Per-request host logic of the paged engine: the reference decode loop, one sampled token at a time.

``advance`` is ``ReferenceBackend.run``'s loop body: the thinking controller may force a token (the
hand-off text and the close tag), which replaces the GPU-sampled one; an EOS inside the thinking
block closes it instead of ending; EOS after it ends the request; the answer budget ends it by
length. The token that is emitted is the one appended to the sequence, so the next step feeds it.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

import torch

from budgetllm.engine.eviction import RowRule
from budgetllm.engine.paged.sampler import SamplingBatch, make_sampling_batch
from budgetllm.engine.paged.sequence import Sequence
from budgetllm.engine.request import GenerationRequest, StepOutput


@dataclass
class Handle:
    """The backend's side of one request: its queue of outputs and its timing."""

    req: GenerationRequest
    out: queue.Queue
    done: bool = False
    rule: RowRule | None = None
    t_first: float | None = None
    t_start: float = field(default_factory=time.perf_counter)

    final: object = None  # the last item (finished StepOutput or error), put by flush()
    pending: list = field(default_factory=list)  # tokens not yet handed to the consumer

    def emit(self, step: StepOutput) -> None:
        """Stage a token for deliver(); a finishing item waits for flush(), i.e. until the engine has
        released the request's pages on the device, so a caller that sees the end sees a free pool.

        Tokens are staged, not queued, so that the engine can launch its next GPU step first and
        wake the consumer threads while the GPU works (their GIL time then overlaps the step)."""
        if step.finished is not None:
            self.done = True
            self.final = step
        else:
            self.pending.append(step)

    def deliver(self) -> None:
        for step in self.pending:
            self.out.put(step)
        self.pending.clear()

    def cancel(self) -> None:
        if not self.done:
            self.emit(StepOutput(-1, False, finished="cancelled"))

    def fail(self, err: BaseException) -> None:
        self.done = True
        self.final = err

    def flush(self) -> None:
        self.deliver()  # tokens before the end
        if self.final is not None:
            self.out.put(self.final)
            self.final = None

    def account(self, seq: Sequence, decode: bool, page_bytes: int, seconds: float) -> None:
        """The reference's accounting after a forward: observe (and, for decode, the entries read).

        Live entries and pages come from the GPU readback of this step; attention read every entry
        of every row of the sequence (rows hold only visible entries), i.e. ``live`` entries.
        """
        m = self.req.meter
        m.observe(seq.num_cached, seq.live_entries, reserved_bytes=seq.pages_held * page_bytes)
        now = time.perf_counter()
        if self.t_first is None:
            # Time to the first token, whatever forward produced it (a resumed turn whose new tokens
            # ride on a decode step of its parked rows has no prefill forward of its own).
            self.req.prefill_seconds = now - self.t_start
            self.req.cached_tokens = seq.reused
            self.t_first = now
        elif decode:
            self.req.decode_seconds = now - self.t_first
        if decode:
            m.read(seq.live_entries)


def row_rule_for(h: Handle, has_logits: bool, pool_window: int) -> RowRule:
    """The request's rule as row tensors. The window is the pool's (one ring size per pool): a
    "window"-mode rule with another window runs with the pool's window (see docs in paged_backend)."""
    if h.rule is None:
        h.rule = h.req.rule.row(has_logits)
    return h.rule


def sampling_for(handles: list[Handle], device: torch.device) -> SamplingBatch:
    banned, constraints = [], []
    for h in handles:
        ctrl = h.req.controller
        banned.append(h.req.banned_after_thinking if not ctrl.thinking and ctrl.budget else None)
        constraints.append(None if ctrl.thinking else h.req.constraint)  # grammars start with the answer
    return make_sampling_batch([h.req.sampling for h in handles], banned, device, constraints)


def advance(h: Handle, seq: Sequence, sampled: int) -> str | None:
    """Apply one sampled token; returns a finish reason ("stop", "length", "cancelled") or None."""
    req = h.req
    ctrl = req.controller
    forced = ctrl.next_forced()
    if forced is None and ctrl.answer_budget_left() <= 0:
        h.emit(StepOutput(-1, False, finished="length"))
        return "length"
    tok = forced if forced is not None else int(sampled)
    thinking = ctrl.thinking
    if thinking:
        if not ctrl.observe(tok, is_eos=forced is None and tok in req.eos_ids):
            tok = ctrl.next_forced()  # an EOS inside the block: the controller closes it instead
            thinking = ctrl.thinking
            ctrl.observe(tok)
    elif tok in req.eos_ids:
        h.emit(StepOutput(tok, False, finished="stop"))
        return "stop"
    else:
        ctrl.observe(tok)
    if not thinking and req.constraint is not None and not req.constraint.accept(tok):
        h.emit(StepOutput(-1, False, finished="length"))  # a dead end of the grammar
        return "length"
    seq.append_token(tok)
    if not ctrl.thinking and ctrl.answer_budget_left() <= 0:
        h.emit(StepOutput(tok, thinking))
        h.emit(StepOutput(-1, False, finished="length"))  # no need to feed the last token
        return "length"
    h.emit(StepOutput(tok, thinking))
    if req.cancelled:
        h.cancel()
        return "cancelled"
    return None
