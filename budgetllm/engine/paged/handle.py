"""Per-request host side of the paged engine: a request's output queue and timing (:class:`Handle`),
its rule as row tensors and its sampling masks for the batch.

Each GPU-sampled token goes through :meth:`Handle.step`, i.e. :func:`budgetllm.engine.step.advance`,
the same per-token step as the reference backend's loop: a forced token of the thinking controller
replaces the sampled one, EOS and length end the request. The token that is emitted is the one
appended to the sequence, so the next step feeds it.
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
from budgetllm.engine.step import advance, sampling_masks


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
        if not self.pending:
            return
        if "delivered" not in self.req.phases:
            self.mark("delivered")  # the first token reaches the caller's queue now
        for step in self.pending:
            self.out.put(step)
        self.pending.clear()

    def mark(self, phase: str) -> None:
        """Record ``phase`` in the request's phases: seconds since its start (the first time only)."""
        self.req.phases.setdefault(phase, time.perf_counter() - self.t_start)

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

    def step(self, seq: Sequence, sampled: int) -> str | None:
        """Apply one GPU-sampled token (:func:`budgetllm.engine.step.advance`): emit the outputs and
        append the emitted token to ``seq`` (so the next step feeds it); the finish reason or None."""
        outs = advance(self.req, sampled)
        for out in outs:
            if out.finished is None:
                seq.append_token(out.token_id)
            self.emit(out)
        return outs[-1].finished

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
    "window"-mode rule with another window runs with the pool's window (see PagedBackend.run, engine/paged/backend.py)."""
    if h.rule is None:
        h.rule = h.req.rule.row(has_logits)
    return h.rule


def sampling_for(handles: list[Handle], device: torch.device) -> SamplingBatch:
    banned, constraints = [], []
    for h in handles:
        b, c = sampling_masks(h.req)
        banned.append(b)
        constraints.append(c)
    return make_sampling_batch([h.req.sampling for h in handles], banned, device, constraints)
