"""The reference backend's request loop: one forward at a time over a :class:`ReferenceSequence`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.prefix_tree import PrefixTree
from budgetllm.engine.reference.sampler import Sampler
from budgetllm.engine.reference.sequence import ReferenceSequence
from budgetllm.engine.request import GenerationRequest, StepOutput
from budgetllm.engine.step import advance, sampling_masks
from budgetllm.models.loading import LoadedModel


class ReferenceBackend:
    """Runs requests one forward at a time (a lock per step, so concurrent streams interleave)."""

    name = "reference"
    PREFIX_CACHE_BYTES = 1 << 30  # kept states (K/V bytes), least recently used released first

    def __init__(self, model: LoadedModel, prefix_cache: bool = True, prefix_cache_bytes: int | None = None):
        self.model = model
        self._lock = threading.Lock()
        self.active = 0
        self.tokens_generated = 0
        # Agents resend the whole conversation every turn: the compressed state kept after an earlier
        # call's prompt or end, whose tokens are a prefix of the new prompt, is reused and only the
        # new tokens are fed (a chunked prefill on top of a compressed cache; exact, because the
        # cache after a prefix does not depend on what follows it). See engine/prefix_tree.py.
        self.prefix_cache = prefix_cache
        self.prefixes = PrefixTree(self.PREFIX_CACHE_BYTES if prefix_cache_bytes is None else prefix_cache_bytes)

    def _reuse(self, rule: EvictionRule, prompt_ids: list[int]) -> ReferenceSequence | None:
        e = self.prefixes.match(prompt_ids, rule)
        if e is None:
            return None
        self.prefixes.count_hit(e)
        return e.state.fork()

    def _remember(self, rule: EvictionRule, seq: ReferenceSequence) -> None:
        if not self.prefix_cache or not seq.ids:
            return
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        nbytes = seq.live_entries() * 2 * head_dim * self.model.dtype.itemsize
        self.prefixes.insert(seq.ids, rule, seq.fork(), nbytes)

    def clear_prefix_cache(self) -> None:
        with self._lock:
            while self.prefixes.pop_lru() is not None:
                pass

    def new_sequence(self, rule: EvictionRule, collect_logits: bool = False) -> ReferenceSequence:
        return ReferenceSequence(self.model, rule, collect_logits=collect_logits)

    def run(self, req: GenerationRequest) -> Iterator[StepOutput]:
        sampler = Sampler(req.sampling, self.model.device)
        self.active += 1
        seq = None
        try:
            t0 = time.perf_counter()
            with self._lock:
                if req.cancelled:  # cancelled while waiting for the lock: no prefill for nobody
                    return
                seq = (self._reuse(req.rule, req.prompt_ids) if self.prefix_cache else None) or \
                    self.new_sequence(req.rule)
                req.cached_tokens = seq.seen
                for k in req.keep_at:
                    if seq.seen < k < len(req.prompt_ids):
                        seq.forward(req.prompt_ids[seq.seen:k])
                        self._remember(req.rule, seq)
                logits = seq.forward(req.prompt_ids[seq.seen:])[-1]
                self._remember(req.rule, seq)
            req.prefill_seconds = time.perf_counter() - t0
            req.meter.observe(seq.seen, seq.live_entries())
            t0 = time.perf_counter()
            while True:
                outs = advance(req, lambda x=logits: sampler(x, *sampling_masks(req)))  # samples unless forced
                for out in outs:
                    yield out
                    if out.finished:
                        return
                if req.cancelled:
                    continue  # cancelled while the consumer held the token: the next advance ends it
                tok = outs[-1].token_id
                with self._lock:
                    logits = seq.forward([tok])[-1]
                self.tokens_generated += 1
                live = seq.live_entries()
                req.meter.observe(seq.seen, live)
                req.meter.read(live)
                req.decode_seconds = time.perf_counter() - t0
        finally:
            self.active -= 1
            if seq is not None and not req.cancelled:
                with self._lock:
                    self._remember(req.rule, seq)

    def close(self) -> None:
        """Release the kept prefix states and keep no more (idempotent). A request still running
        ends normally; the model goes with the last reference to this backend."""
        self.prefix_cache = False
        self.clear_prefix_cache()

    def pool_stats(self) -> dict:
        return {"active": self.active, "queued": 0, "tokens_generated": self.tokens_generated,
                "prefix_entries": len(self.prefixes), "prefix_bytes": self.prefixes.nbytes,
                "prefix_hits": self.prefixes.hits, "prefix_tokens_reused": self.prefixes.reused_tokens}
