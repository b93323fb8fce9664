"""Batched next-token sampling on the GPU without a host sync.

Every row has its own temperature / top-p / top-k as tensors; greedy rows (temperature 0) take the
argmax. Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which needs no
``multinomial`` (and so no sync). Banned tokens (the thinking tags after a closed thinking block)
are masked with host-built index tensors copied asynchronously.

Grammar-constrained rows (requests with a :class:`budgetllm.constrain.Constraint`, in their answer)
get a packed token bitmask: the host fills it while the GPU runs the step's forward (the engine
builds the batch after launching it), copies it asynchronously, and the sampler masks exactly those
rows (``index_select`` / ``index_copy``: no sync, no data-dependent shapes). A batch without such a
row builds nothing and launches nothing extra; a row whose grammar allows every token (free text
before a tool call) is skipped too.

Unlike the reference Sampler (one seeded generator per request), one generator serves the whole
batch: with ``seed`` set, sampled streams are reproducible for the same batch composition only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from budgetllm.types import SamplingParams


@dataclass
class SamplingBatch:
    greedy: torch.Tensor | None  # [B] bool (None when every row is greedy)
    temperature: torch.Tensor | None  # [B] float32
    top_p: torch.Tensor | None  # [B] float32
    top_k: torch.Tensor | None  # [B] int64 (0 = off)
    all_greedy: bool
    any_top_p: bool
    any_top_k: bool
    banned_rows: torch.Tensor | None = None  # [K] int64
    banned_ids: torch.Tensor | None = None  # [K] int64
    mask_rows: torch.Tensor | None = None  # [M] int64: the rows with a grammar mask
    mask_bits: torch.Tensor | None = None  # [M, ceil(V/32)] int32: their packed allowed-token bits
    mask_all_rows: bool = False  # every row is masked, in order: the sampler masks the logits in place


class HostMasks:
    """Fills the bitmasks of the constrained rows into reused host buffers (pinned on CUDA) and
    copies them into reused device buffers: no allocation per step.

    From ``BATCH_FILL`` constrained rows on, xgrammar's ``BatchGrammarMatcher`` fills them on its
    own threads (C++, in parallel) instead of one Python call per row; it does not say which rows
    allow every token, so those rows are masked too, with an all-ones mask (no effect on any
    logit: the mask covers the whole vocabulary), and the tokens stay exactly those of the
    row-by-row fill. Reuse is safe: every engine step ends with a readback that waits for the
    step's copies, and the device buffers are read by the same stream that writes them."""

    BATCH_FILL = 8

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None  # [R, W] int32, host
        self._rows: torch.Tensor | None = None  # [R] int64, host
        self._dev: tuple[torch.Tensor, torch.Tensor] | None = None  # the same two on the device
        self._batch = None  # xgrammar.BatchGrammarMatcher, made on the first large batch
        self._device: torch.device | None = None

    def _buffers(self, n: int, vocab: int, device: torch.device) -> torch.Tensor:
        from budgetllm.constrain.mask import allocate_bitmask

        buf = self._buf
        if buf is None or buf.shape[0] < n or buf.shape[1] * 32 < vocab or self._device != device:
            self._device = device  # as given ("cuda" is not equal to the tensors' "cuda:0")
            pin = device.type == "cuda"
            buf = self._buf = allocate_bitmask(max(n, 8), vocab, pin=pin)
            self._rows = torch.zeros(buf.shape[0], dtype=torch.int64, pin_memory=pin)
            self._dev = (torch.zeros(buf.shape[0], dtype=torch.int64, device=device),
                         torch.empty(buf.shape, dtype=torch.int32, device=device))
        return buf

    def _fill_batch(self, live: list, buf: torch.Tensor) -> list[int] | None:
        """xgrammar's threaded batch fill of rows 0..len(live)-1; None when it cannot run here."""
        matchers = [c.batch_matcher() for _, c in live]
        if any(m is None for m in matchers):
            return None
        if self._batch is None:
            import xgrammar

            self._batch = xgrammar.BatchGrammarMatcher()
        self._batch.batch_fill_next_token_bitmask(matchers, buf, list(range(len(live))))
        return [b for b, _ in live]

    def build(self, constraints: list, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        live = [(b, c) for b, c in enumerate(constraints) if c is not None]
        if not live:
            return None, None
        buf = self._buffers(len(live), live[0][1].vocab_size, device)
        rows = self._fill_batch(live, buf) if len(live) >= self.BATCH_FILL else None
        if rows is None:
            rows = []
            for b, c in live:
                if c.fill(buf, len(rows)):  # False: every token allowed, nothing to apply
                    rows.append(b)
        if not rows:
            return None, None
        k = len(rows)
        self._rows.numpy()[:k] = rows
        if device.type == "cpu":  # the host buffers are the device's
            return self._rows[:k], buf[:k]  # read by this step's sampler before the next fill
        dev_rows, dev_bits = self._dev
        dev_rows[:k].copy_(self._rows[:k], non_blocking=True)
        dev_bits[:k].copy_(buf[:k], non_blocking=True)
        return dev_rows[:k], dev_bits[:k]


_HOST_MASKS = threading.local()  # one buffer per engine thread


def make_sampling_batch(params: list[SamplingParams], banned: list[list[int] | None],
                        device: torch.device, constraints: list | None = None) -> SamplingBatch:
    """``constraints[b]``: row b's grammar when its next token is an answer token (else None)."""
    mask_rows = mask_bits = None
    if constraints and any(c is not None for c in constraints):
        host = getattr(_HOST_MASKS, "masks", None) or HostMasks()
        _HOST_MASKS.masks = host
        mask_rows, mask_bits = host.build(constraints, device)
    # rows are listed in batch order, so as many as the batch means all of them (no gather/scatter)
    mask_all = mask_bits is not None and mask_bits.shape[0] == len(constraints)
    greedy = [p.greedy for p in params]
    temps = [max(p.temperature, 1e-5) for p in params]
    top_p = [float(p.top_p) for p in params]
    top_k = [int(p.top_k or 0) for p in params]
    rows, ids = [], []
    for b, ban in enumerate(banned):
        if ban:
            rows += [b] * len(ban)
            ids += list(ban)
    pin = device.type == "cuda"

    def t(values, dtype):
        return torch.tensor(values, dtype=dtype, pin_memory=pin).to(device, non_blocking=True)

    if all(greedy):  # the common case: no parameter tensors at all
        return SamplingBatch(greedy=None, temperature=None, top_p=None, top_k=None, all_greedy=True,
                             any_top_p=False, any_top_k=False,
                             banned_rows=t(rows, torch.int64) if rows else None,
                             banned_ids=t(ids, torch.int64) if rows else None,
                             mask_rows=mask_rows, mask_bits=mask_bits, mask_all_rows=mask_all)

    return SamplingBatch(
        greedy=t(greedy, torch.bool), temperature=t(temps, torch.float32), top_p=t(top_p, torch.float32),
        top_k=t(top_k, torch.int64), all_greedy=all(greedy), any_top_p=any(p < 1.0 for p in top_p),
        any_top_k=any(k > 0 for k in top_k),
        banned_rows=t(rows, torch.int64) if rows else None, banned_ids=t(ids, torch.int64) if rows else None,
        mask_rows=mask_rows, mask_bits=mask_bits, mask_all_rows=mask_all,
    )


class GPUSampler:
    def __init__(self, device: torch.device, seed: int | None = None):
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed if seed is not None else torch.seed() % (2**63))

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
        """logits [B, V] float32 (modified in place when tokens are banned) -> tokens [B] int64."""
        if sb.banned_rows is not None:
            logits[sb.banned_rows, sb.banned_ids] = float("-inf")
        if sb.mask_rows is not None:
            from budgetllm.constrain.mask import apply_bitmask

            apply_bitmask(logits, sb.mask_bits, None if sb.mask_all_rows else sb.mask_rows)
        greedy_tok = torch.argmax(logits, dim=-1)
        if sb.all_greedy:
            return greedy_tok
        x = logits / sb.temperature[:, None]
        if sb.any_top_k or sb.any_top_p:
            sorted_x, idx = torch.sort(x, dim=-1, descending=True)
            if sb.any_top_k:
                k = torch.where(sb.top_k > 0, sb.top_k, x.shape[-1]).clamp(max=x.shape[-1])
                kth = sorted_x.gather(1, (k - 1)[:, None])
                sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))
            if sb.any_top_p:
                p = torch.softmax(sorted_x, dim=-1)
                drop = p.cumsum(-1) - p > sb.top_p[:, None]  # keep the smallest prefix reaching top_p
                sorted_x = sorted_x.masked_fill(drop, float("-inf"))
            x = torch.full_like(x, float("-inf")).scatter(1, idx, sorted_x)
        probs = torch.softmax(x, dim=-1)
        race = torch.empty_like(probs).exponential_(generator=self.generator)
        sampled = torch.argmax(probs / race, dim=-1)
        return torch.where(sb.greedy, greedy_tok, sampled)
