"""Launch-ahead decode: step N+1 is launched before step N is read back, so the host's readback and
per-row work overlap the GPU's next step (torch-free: the rules; the device part is
engine/paged/step_io.py).

Lockstep, a decode step is: schedule -> fill the inputs -> replay -> sample -> ONE readback (sync) ->
per-row host logic -> next step, and the GPU idles while the host works. Launched ahead, step N+1
takes its input tokens on the device from step N's sampled tokens (``ModelRunner.decode_ahead``),
its batch is N's batch (same rows, slots, rules, sampling parameters), and the host reads N while
N+1 runs; then it decides on N+2 the same way. The engine's step (engine/paged/engine_loop.py) is
"launch N+1 if allowed, then read N".

Outputs are exactly the lockstep ones. Step N+1 runs ahead only when its lockstep twin is certain to
be the same step, whatever N samples, except for one device-checked case (a sampled
``engine.step.void_ids`` token: an EOS, or the close tag's last token while thinking); every other
case falls back to lockstep for that step (:func:`can_run_ahead`):

* every row feeds its sampled token unchanged (``engine.step.feeds_sampled``): no grammar row (its
  mask needs N's token), no forced token (hand-off, close tag, answer prefix), no row within two
  tokens of its answer budget (a "length" end at N) or of its thinking budget's close, not
  cancelled (``ThinkingController.steady``: the answer phase, or the thinking phase away from its
  budget's end);
* the batch would be scheduled again as it is: nothing waiting, no prefill chunk, no command queued
  (add, cancel), every running sequence in the batch;
* no row can run out of pages in N or N+1 (host and device free pages >= two decode margins), so
  nothing is preempted at N and the scheduler would not evict a kept state before N+1;
* the step fits a graph bucket with spare padding slots (eager steps, and buckets of more than
  ``AHEAD_ROWS`` rows, run in lockstep: there the GPU step is long and the host's share small).

The cases decided after the launch:

* **A row samples a void id at N.** The model closing its thinking block itself changes N+1's
  sampling masks (tokens banned after the block) and may force an answer prefix, and an EOS inside
  the block is replaced by the close: N+1 is void as below, and runs again in lockstep.
* **A row samples an EOS at N** (it ends, "stop"): lockstep would run N+1 without it, in a smaller
  batch (maybe another bucket, other kernels, other random numbers for seeded rows), and its kept
  state (conversation reuse) must hold N's tokens only, while a store in N+1 cannot be undone (DMS
  reuses evicted entries in place). So the device turns the whole of N+1 into a *void* step (every
  row a padding row on a spare padding slot: nothing written), and the host **discards** it: the
  sampler's random state is put back to before N+1 (the seeded stream then gives the same tokens),
  and N+1 runs again in lockstep with the rows that are left.
* **A row is cancelled** while N runs (the consumer closed its stream): its N+1 output is **discarded**
  (the scheduler skips rows that are no longer running), and its slot's release is queued behind N+1,
  so the pages N+1 took come back with the others; the other rows keep their N+1, which is the
  lockstep step of a cancel seen one step later (a cancel's step is a race in both modes).
* A row that overflows its pages at N (excluded above, but read defensively) is preempted the same
  way: released behind N+1, its N+1 output skipped.

Requests joining, prefill chunks, preemptions, a row reaching max_tokens, grammar rows and thinking
rows near their budget's close all end the run-ahead for that step (lockstep); the next lockstep
step starts a new run.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetllm.engine.paged.scheduler import Batch
from budgetllm.engine.step import feeds_sampled, void_ids


@dataclass
class Launched:
    """A step on the GPU whose readback the host has not read yet."""

    batch: Batch
    samplers: list  # the sequences whose sampled tokens the readback holds, in its order
    sb: object  # the SamplingBatch (reused as it is by a step launched ahead of this one)
    pending: tuple  # the readback's handle (ModelRunner.read)
    t0: float  # when the engine started the step
    t_launched: float  # when its replay was enqueued
    firsts: list  # handles whose first step this is (their phases are timed on the read)
    ahead: bool = False  # launched before the step before it was read
    eos: object = None  # device [B, K]: each row's engine.step.void_ids (made once per run of steps ahead)
    rng: object = None  # the sampler's random state before this step's sampling (seeded rows)


def can_run_ahead(engine, cur: Launched) -> bool:
    """Whether the decode step after ``cur`` may be launched before ``cur`` is read (module docstring)."""
    b, sched, bm = cur.batch, engine.sched, engine.bm
    if b.kind != "decode" or sched.waiting or not engine._inbox.empty():
        return False
    n = len(b.seqs)
    if len(sched.running) != n or any(s is not r for s, r in zip(b.seqs, sched.running, strict=True)):
        return False
    need = 2 * bm.margin(n)
    if bm.free_pages < need or engine.device_free_pages < need:
        return False
    if engine.runner.ahead_bucket(n) is None:
        return False
    return all(feeds_sampled(s.payload.req) for s in b.seqs)


def voids_ahead(cur: Launched, tokens: list[int]) -> bool:
    """The step launched ahead of ``cur`` is void (the device's test in ``decode_ahead``): a row of
    ``cur`` sampled one of its :func:`~budgetllm.engine.step.void_ids` (an EOS, or the close tag's last
    token while thinking)."""
    return any(t in void_ids(s.payload.req) for s, t in zip(cur.samplers, tokens, strict=True))
