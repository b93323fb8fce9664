"""The only part of the paged engine that touches the GPU: weights, the KV pool, prefill and decode
steps, CUDA graphs, sampling and the one readback per step.

Decode inputs live in static device buffers (``ibuf`` int32 [6, maxbs]: token ids, slots, seq_pos
increment, rule code, sinks, period) filled by one async copy from pinned host memory; each slot's
threshold per (layer, KV head) (``thr_slot`` float64 [layers, slots, KV heads]) is written once, when
a rule first decodes in that slot (admission), and gathered by slot inside the step,
so a step is: copy in -> graph replay (or eager) -> sample on GPU -> one readback of
(sampled tokens, pages and live entries per slot, overflow flags, free pages). Positions are read
from ``kv.seq_pos`` on the GPU; row lengths and block tables never leave the GPU. The end of a step
(sampling, the asynchronous readback) and the decode step launched ahead, fed on the device, are
:class:`~budgetllm.engine.paged.step_io.StepIO`, this class's base.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from budgetllm.cache import PageLayout, PoolConfig, build_pool
from budgetllm.cache.sharing import fork_slot, new_refs, release_slots
from budgetllm.engine.paged import prefill as _prefill
from budgetllm.engine.paged.cuda_graphs import DecodeGraphs, bucket_sizes
from budgetllm.engine.paged.decode_layer import DecodeLayers
from budgetllm.engine.paged.prefill_graphs import BUCKETS as PREFILL_BUCKETS
from budgetllm.engine.paged.prefill_graphs import PrefillGraphs
from budgetllm.engine.paged.readback import AsyncReadback
from budgetllm.engine.paged.readback import free_cached as _free_cached
from budgetllm.engine.paged.readback import without_frames as _without_frames
from budgetllm.engine.paged.sampler import GPUSampler
from budgetllm.engine.paged.step_io import StepIO, spare_padding, void_columns
from budgetllm.engine.rules import ALWAYS, STEP_CODES, RowRule
from budgetllm.kernels import (
    paged_decode_attention,
    store_decode_kv,
)
from budgetllm.kernels.decode_attention import default_num_splits
from budgetllm.kernels.step_inputs import step_inputs
from budgetllm.kernels.step_stats import slot_stats
from budgetllm.models.loading import LoadedModel
from budgetllm.models.modules import FusedModel


@dataclass
class RunnerConfig:
    max_seqs: int = 128
    prefix_slots: int = 0  # extra sequence slots for kept cache states (the prefix tree)
    page_size: int = 16
    memory_fraction: float = 0.85
    num_pages: int | None = None
    max_context: int | None = None  # default: the model's max_position_embeddings
    window: int | None = None  # default: the model's DMS window
    cuda_graphs: bool = True
    max_graph_batch: int | None = None  # default: max_seqs
    seed: int | None = None
    emulate_graphs: bool = False  # tests: pad batches to buckets like CUDA graphs, but run eagerly
    small_batch_gemv: bool | None = None  # buckets of <= 4 rows: engine/paged/decode_layer.py (None: on CUDA)
    decode_pdl: bool = True  # its kernels with programmatic dependent launch (Hopper; bench/NOTES.md)
    prefill_buckets: tuple = PREFILL_BUCKETS  # chunk sizes of the prefill graphs (() = none)


class ModelRunner(StepIO):
    def __init__(self, loaded: LoadedModel, cfg: RunnerConfig):
        try:
            self._build(loaded, cfg)
        except BaseException as e:  # the half-built runner owns the pool, buffers and graphs: drop them
            self.close()
            raise _without_frames(e) from None

    def close(self) -> None:
        """Drop the pool, the buffers and the graphs (and their cycles with this runner): the memory
        returns at once rather than at the next garbage collection, which may fall in a capture."""
        vars(self).clear()
        _free_cached()

    def _build(self, loaded: LoadedModel, cfg: RunnerConfig) -> None:
        self.cfg = cfg
        self.device = loaded.device
        c = loaded.config
        self.max_context = int(cfg.max_context or loaded.max_context)
        self.model = FusedModel(loaded, self.max_context + 1)
        m = self.model
        # One ring size per pool: every request runs with this window (see PagedBackend.run).
        self.window = int(cfg.window if cfg.window is not None else loaded.dms.window)
        # emulate_graphs (CPU tests): buckets and padding rows as with graphs, replay = eager body
        self.use_graphs = (cfg.cuda_graphs and self.device.type == "cuda") or cfg.emulate_graphs
        self.buckets = bucket_sizes(min(cfg.max_graph_batch or cfg.max_seqs, cfg.max_seqs)) if self.use_graphs else []
        # padding slots: the buckets' padding rows, and one per row of a void step (engine/paged/step_io.py)
        pad = max([b - a - 1 for a, b in zip([0] + self.buckets, self.buckets, strict=False)]
                  + [1, spare_padding(self.buckets)]) if self.use_graphs else 0
        self.layout = PageLayout(cfg.page_size, m.D, loaded.dtype.itemsize, c.num_hidden_layers, m.H, self.window,
                                 -(-(self.max_context + 1) // cfg.page_size))
        # sequence slots: running requests + kept states (prefix tree), then 2 for the prefill graphs
        self.num_seq_slots = cfg.max_seqs + cfg.prefix_slots
        extra = 2 if self.use_graphs and cfg.prefill_buckets else 0
        pool_cfg = PoolConfig(page_size=cfg.page_size, memory_fraction=cfg.memory_fraction, num_pages=cfg.num_pages,
                              max_seqs=self.num_seq_slots + extra, padding_slots=pad)
        self.kv, self.pool = build_pool(self.layout, pool_cfg, self.device, loaded.dtype)
        self.pad_slots = list(range(self.pool.padding_slot0, self.pool.padding_slot0 + pad))
        maxbs = cfg.max_seqs
        self.ibuf = torch.zeros(6, maxbs, dtype=torch.int32, device=self.device)
        S_all = self.pool.num_slots  # sequence, prefix and padding slots
        self.thr_slot = torch.zeros(c.num_hidden_layers, S_all, m.H, dtype=torch.float64, device=self.device)
        self.logits_buf = torch.zeros(maxbs, m.vocab, dtype=torch.float32, device=self.device)
        # one readback buffer: greedy tokens of the decode step [maxbs] (argmax inside the graph),
        # then per-slot pages / live entries / overflow flags and the free-page count
        self.read_buf = torch.zeros(maxbs + 3 * self.pool.num_slots + 1, dtype=torch.int64, device=self.device)
        self.refs = new_refs(self.kv)  # extra owners of pages shared between slots (cache/sharing.py)
        self.stats_buf = self.read_buf[maxbs:]
        self.readback = AsyncReadback(self.read_buf, maxbs, self.pool.num_slots)
        self.void_cols = void_columns(self.pad_slots, ALWAYS, self.device)
        pin = self.device.type == "cuda"
        self.ibuf_host = torch.zeros(6, maxbs, dtype=torch.int32, pin_memory=pin)
        # per-slot staging of thresholds: a slot's pinned row is rewritten only when its rule changes,
        # and between two fills of a slot lies the step's readback, so its last async copy has finished
        self.thr_host = torch.zeros(S_all, c.num_hidden_layers, m.H, dtype=torch.float64, pin_memory=pin)
        self.thr_rule: list = [None] * S_all  # the rule whose thresholds thr_slot[:, slot] holds
        self.ibuf_np = self.ibuf_host.numpy()
        self.sampler = GPUSampler(self.device, cfg.seed)
        use_fast = cfg.small_batch_gemv if cfg.small_batch_gemv is not None else self.device.type == "cuda"
        self.fast = DecodeLayers(m, self.device, cfg.decode_pdl) if use_fast and DecodeLayers.supports(m) else None
        self.graphs = DecodeGraphs(self, self.buckets, emulate=cfg.emulate_graphs) if self.use_graphs else None
        if self.graphs is not None:
            self.graphs.capture()
        self.prefill_graphs, self.prefill_graph_error = None, None
        if extra:
            pg = PrefillGraphs(self, self.num_seq_slots, self.num_seq_slots + 1, cfg.prefill_buckets,
                               emulate=cfg.emulate_graphs)
            try:
                pg.capture()
                self.prefill_graphs = pg
            except Exception as e:  # noqa: BLE001 - the eager prefill still works; say why graphs are off
                import traceback

                self.prefill_graph_error = traceback.format_exc(limit=8)
                warnings.warn(f"prefill CUDA graphs are off: {e!r}", stacklevel=2)

    # -- pool -------------------------------------------------------------------------------
    def release(self, slots: list[int]) -> None:
        if slots:
            release_slots(self.kv, self.refs, slots)

    def fork(self, src: int, dst: int, seq_len: int) -> int:
        """Slot ``dst`` becomes a copy-on-write twin of ``src`` (a kept state of the prefix tree)."""
        return fork_slot(self.kv, self.refs, src, dst, seq_len)

    def num_splits(self, bs: int) -> int:
        return default_num_splits(bs, self.model.H, self.layout.max_pages_per_row * self.cfg.page_size, self.device)

    # -- decode -----------------------------------------------------------------------------
    def decode_body(self, bs: int, num_splits: int) -> None:
        """One decode step over the first ``bs`` rows of the static buffers (graph-capturable)."""
        m, kv = self.model, self.kv
        ib = self.ibuf[:, :bs]
        ids, slots, inc = ib[0], ib[1], ib[2]
        # positions, step_decisions and each row's thresholds in one launch (kernels/step_inputs.py)
        pos, base, uses_thr, thr = step_inputs(self.ibuf, bs, kv.seq_pos, self.thr_slot, m.H, STEP_CODES)
        decide = (thr, base, uses_thr)
        if self.fast is not None and self.fast.takes(bs):  # chosen per bucket, at capture time
            self.logits_buf[:bs] = self.fast.step(ids, pos, slots, base, decide, kv, num_splits)
        else:
            x, h = m.embed_norm(ids)
            for li in range(m.num_layers):
                q, k, v, dec = m.attention_inputs(li, x, h, pos, decide)
                store_decode_kv(kv, k, v, base if dec is None else dec, li, slots)
                o = paged_decode_attention(q, kv, li, slots, m.scale, num_splits=num_splits)
                x, h = m.attention_out(li, x, o)
                x, h = m.mlp(li, x, h)
            self.logits_buf[:bs] = m.logits(h)
        self.read_buf[:bs] = self.logits_buf[:bs].argmax(-1)
        self.compute_stats(advance=(slots, inc))  # and seq_pos[slots] += inc

    def warm_decode(self, bs: int, num_splits: int) -> None:
        """One eager decode step of exactly ``bs`` rows, before the bucket's capture: the padding slots,
        then free sequence slots (none is in use while the runner is built), released again after."""
        seq = list(range(max(0, bs - len(self.pad_slots))))
        self.fill_decode([], bs, self.pad_slots + seq)
        self.decode_body(bs, num_splits)
        self.release(seq)

    def compute_stats(self, advance: tuple | None = None) -> None:
        """Per slot: pages held (rows have no holes: ceil(len / PAGE) each), live entries, overflow flag;
        and the free-page count, into one static buffer (inside the decode graph), in one launch
        (``kernels/step_stats.py``; ``advance`` = (slots, inc): the step's ``seq_pos += inc`` too)."""
        slot_stats(self.kv, self.pool.num_slots, self.cfg.page_size, self.stats_buf, advance)

    def fill_decode(self, rows: list[tuple[int, int, RowRule]], bs: int, pads: list[int] | None = None) -> None:
        """Stage (slot, token, rule) rows and ``bs - len(rows)`` padding rows into the static buffers
        (numpy views of pinned memory: per-element torch indexing would cost ~1 ms per step). A slot's
        thresholds are copied only when its rule changes (admission); padding rows never read theirs."""
        h = self.ibuf_np
        for i, (slot, tok, r) in enumerate(rows):
            h[:, i] = (tok, slot, 1, r.code, r.sinks, r.period)
            if self.thr_rule[slot] is not r:
                self.stage_thresholds(slot, r)
        for j, i in enumerate(range(len(rows), bs)):
            h[:, i] = (0, (pads or self.pad_slots)[j], 0, ALWAYS, 0, 1)
        # whole buffer: a contiguous pinned -> device copy stays asynchronous (a few hundred bytes)
        self.ibuf.copy_(self.ibuf_host, non_blocking=True)

    def stage_thresholds(self, slot: int, rule: RowRule) -> None:
        """Write ``rule``'s [layers, KV heads] thresholds into ``thr_slot[:, slot]`` (async, pinned)."""
        L, _, H = self.thr_slot.shape
        if self.thr_rule[slot] is None or self.thr_rule[slot] != rule:
            self.thr_host[slot] = rule.thr_grid(L, H)
            self.thr_slot[:, slot].copy_(self.thr_host[slot], non_blocking=True)
        self.thr_rule[slot] = rule

    @torch.inference_mode()
    def decode(self, rows: list[tuple[int, int, RowRule]]) -> torch.Tensor:
        """Feed one token per row; returns logits [B, V] float32 (a view of a static buffer)."""
        B = len(rows)
        bs = self.graphs.bucket_for(B) if self.graphs is not None else None
        if bs is None:
            self.fill_decode(rows, B)
            self.decode_body(B, self.num_splits(B))
        else:
            self.fill_decode(rows, bs)
            self.graphs.replay(bs)
        return self.logits_buf[:B]

    # -- prefill (engine/paged/prefill.py) ------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, items: list[tuple[int, list[int], int, RowRule]], want: list[bool],
                free_pages: int = 0) -> torch.Tensor:
        """Feed chunks (slot, token ids, first position, rule); see :func:`prefill.prefill`."""
        return _prefill.prefill(self, items, want, free_pages)

    def prefill_body(self, *args, **kwargs) -> torch.Tensor:
        """Every layer over the chunks (graph-capturable); see :func:`prefill.prefill_body`."""
        return _prefill.prefill_body(self, *args, **kwargs)
