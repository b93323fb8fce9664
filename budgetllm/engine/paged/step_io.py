"""The end of a step and the launch-ahead decode step: a part of
:class:`~budgetllm.engine.paged.model_runner.ModelRunner` (its base class).

A step ends with :meth:`StepIO.sample`: the tokens are sampled on the GPU into the runner's read
buffer (``read_buf[:B]``; an all-greedy decode step without masks took its argmax inside the graph
and launches nothing here) and the buffer's one device->host copy is *started*
(:class:`~budgetllm.engine.paged.readback.AsyncReadback`); :meth:`StepIO.read` waits for that copy
only. Between the two the engine may launch the next decode step with :meth:`StepIO.decode_ahead`,
whose input ids are ``read_buf[:B]`` itself: the token never goes through the host.

A step launched ahead must be discardable without a trace, because the host learns only afterwards
whether the step before it ended a row by a sampled EOS (engine/paged/launch_ahead.py says why it
must then be discarded). So ``decode_ahead`` checks on the device whether any row's input token is
one of that row's EOS ids, and if so turns *every* row of the step into a padding row on its own
spare padding slot (a *void* step): frozen slots that never allocate and never move
(``budgetllm.cache.pool``), so a void step writes no sequence slot, no page and no position. The
pool has at least ``min(AHEAD_ROWS, largest graph bucket)`` padding slots for this; a step runs ahead
only in a graph bucket of at most that many rows (:meth:`StepIO.ahead_bucket`).
"""

from __future__ import annotations

import torch

from budgetllm.engine.paged.readback import Readback
from budgetllm.engine.paged.sampler import SamplingBatch

AHEAD_ROWS = 16  # the largest graph bucket a step may be launched ahead in (its spare padding slots)


def spare_padding(buckets: list[int]) -> int:
    """Padding slots the pool needs beyond the graph buckets' own: one per row of the largest bucket
    a step may run ahead in (0 without graphs: eager steps never run ahead)."""
    return min(AHEAD_ROWS, buckets[-1]) if buckets else 0


def void_columns(pad_slots: list[int], always: int, device: torch.device) -> torch.Tensor:
    """int32 [6, n]: the staged inputs of padding rows (ids, slot, inc, rule code, sinks, period), one
    per spare padding slot, as ``ModelRunner.fill_decode`` stages its padding rows."""
    n = min(AHEAD_ROWS, len(pad_slots))
    cols = torch.tensor([[0, pad_slots[j], 0, always, 0, 1] for j in range(n)], dtype=torch.int32).view(n, 6)
    return cols.t().contiguous().to(device)


class StepIO:
    """Sampling, the asynchronous readback and the decode step launched ahead (state on the runner:
    ``ibuf``, ``read_buf``, ``logits_buf``, ``graphs``, ``sampler``, ``readback``, ``void_cols``)."""

    def ahead_bucket(self, rows: int) -> int | None:
        """The graph bucket a step of ``rows`` rows launched ahead replays, or None when it cannot run
        ahead (eager: no graphs or too many rows; a bucket larger than the spare padding slots)."""
        if self.graphs is None:
            return None
        bs = self.graphs.bucket_for(rows)
        return bs if bs is not None and bs <= self.void_cols.shape[1] else None

    def eos_rows(self, eos_ids: list) -> torch.Tensor:
        """int64 [B, K] device tensor of each row's ids that void a step launched ahead (EOS ids, and the
        close tag's end while thinking: engine.step.void_ids; -1 = none), copied asynchronously."""
        k = max([len(e) for e in eos_ids] + [1])
        rows = [sorted(e) + [-1] * (k - len(e)) for e in eos_ids]
        pin = self.device.type == "cuda"
        return torch.tensor(rows, dtype=torch.int64, pin_memory=pin).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def decode_ahead(self, rows: int, eos: torch.Tensor) -> torch.Tensor:
        """Launch the next decode step of the last step's ``rows`` rows (same slots and rules: the
        static buffers still hold them) fed ``read_buf[:rows]``, the tokens that step sampled; a void
        step (see the module docstring) when any of them is one of its row's ``eos`` ids. Returns
        the logits [rows, V] (a view of the static buffer)."""
        bs = self.ahead_bucket(rows)
        ib, tok = self.ibuf, self.read_buf[:rows]
        ib[0, :rows].copy_(tok)
        hit = (tok[:, None] == eos).any()
        ib[:, :bs].copy_(torch.where(hit, self.void_cols[:, :bs], ib[:, :bs]))
        self.graphs.replay(bs)
        return self.logits_buf[:rows]

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor | None, sb: SamplingBatch | None, decoded: bool = False) -> tuple:
        """Sample on the GPU into ``read_buf[:B]``, then start the ONE device->host copy of tokens,
        per-slot pages / live / oom and free pages; returns the handle for :meth:`read`.

        ``decoded``: ``logits`` came from a decode step, whose graph already took the argmax into
        ``read_buf``; an all-greedy batch without banned tokens or grammar masks needs no kernel here."""
        B = 0 if logits is None or sb is None else logits.shape[0]
        fast = decoded and sb is not None and sb.all_greedy and sb.banned_rows is None and sb.mask_rows is None
        if B and not fast:
            self.read_buf[:B].copy_(self.sampler(logits, sb))
        return self.readback.start(B)

    def read(self, pending: tuple) -> Readback:
        """Wait for the copy :meth:`sample` started (only for it) and parse it."""
        return self.readback.finish(pending)

    def sample_and_read(self, logits: torch.Tensor | None, sb: SamplingBatch | None, decoded: bool = False) -> Readback:
        """:meth:`sample` then :meth:`read`: one step in lockstep (benchmarks, tests)."""
        return self.read(self.sample(logits, sb, decoded))
