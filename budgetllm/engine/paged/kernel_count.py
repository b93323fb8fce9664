"""Count the kernels a prefill body launches, per layer and per piece (a diagnostic for the prefill
graphs: every kernel in a graph costs a launch slot and a few microseconds of GPU time however small
its work, so the count per layer is what the graphs' GPU time follows at agent-turn sizes).

A kernel is an aten op that does work (views, reshapes and allocations are free) or a Triton launch
(the Triton interpreter's own tensor copies are not counted). Used by ``bench/count_prefill_kernels.py``
and the kernel-count test.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict

from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that launch nothing (metadata, views, allocations)
_FREE = {"view", "_unsafe_view", "expand", "slice", "select", "transpose", "t", "as_strided", "alias", "detach",
         "unsqueeze", "squeeze", "permute", "empty", "empty_like", "empty_strided", "lift_fresh", "split",
         "split_with_sizes", "chunk", "unbind", "_reshape_alias", "reshape", "view_as", "contiguous", "numpy_T",
         "_local_scalar_dense", "is_pinned", "_to_copy_noop", "unfold", "narrow", "diagonal"}


class KernelCounter(TorchDispatchMode):
    """Records (piece, op name) for every aten op that launches work, and Triton launches."""

    def __init__(self):
        super().__init__()
        self.piece = "outside"
        self.events: list[tuple[str, str]] = []
        self._quiet = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self._quiet and name not in _FREE:
            self.events.append((self.piece, name))
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def section(self, piece: str):
        old, self.piece = self.piece, piece
        try:
            yield
        finally:
            self.piece = old

    def triton(self, name: str):
        if not self._quiet:
            self.events.append((self.piece, "triton:" + name))
        self._quiet += 1

    def triton_done(self):
        self._quiet -= 1


def _patch_triton(counter: KernelCounter):
    """Wrap Triton's launch entry points (compiled and interpreted) to count one kernel each."""
    from triton.runtime import interpreter, jit

    saved = []
    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        orig = cls.run

        def run(self, *a, _orig=orig, **k):
            fn = getattr(self, "fn", None)
            counter.triton(getattr(fn, "__name__", "kernel"))
            try:
                return _orig(self, *a, **k)
            finally:
                counter.triton_done()

        saved.append((cls, orig))
        cls.run = run
    return saved


def _wrap(obj, name: str, counter: KernelCounter, piece: str):
    orig = getattr(obj, name)

    def f(*a, **k):
        with counter.section(piece):
            return orig(*a, **k)

    return orig, f


def count_prefill_kernels(loaded, tokens: int = 40) -> dict:
    """Build a paged runner on the ``LoadedModel`` (graphs emulated: the padded graph body runs eagerly),
    prefill one chunk of ``tokens`` tokens under a threshold rule through the prefill graph's body, and count."""
    import budgetllm.engine.paged.prefill as prefill_mod
    from budgetllm.engine.eviction import THRESHOLD, RowRule
    from budgetllm.engine.paged.backend import PagedBackend

    be = PagedBackend(loaded, max_seqs=2, page_size=16, num_pages=400, cuda_graphs=False, emulate_graphs=True,
                      max_context=512)
    try:
        r = be.runner
        m, pg = r.model, r.prefill_graphs
        counter = KernelCounter()
        patches = [(m, n, *_wrap(m, n, counter, n)) for n in ("embed_norm", "attention_inputs", "attention_out",
                                                                 "mlp")]
        patches += [(prefill_mod, n, *_wrap(prefill_mod, n, counter, p)) for n, p in
                    (("dms_prefill_attention", "attention"), ("store_prefill_kv", "store"),
                     ("compact_unflagged", "compaction"))]
        for obj, n, _, f in patches:
            setattr(obj, n, f)
        saved = _patch_triton(counter)
        layer_of = []
        orig_ai = m.attention_inputs

        def ai(li, *a, **k):
            layer_of.append(len(counter.events))
            return orig_ai(li, *a, **k)

        orig_mlp = m.mlp

        def mlp(*a, **k):
            out = orig_mlp(*a, **k)
            layer_end[0] = len(counter.events)
            return out

        layer_end = [0]
        m.attention_inputs, m.mlp = ai, mlp
        rule = RowRule(THRESHOLD, thr=0.0)
        T = pg.bucket_for(tokens)
        toks = list(range(5, 5 + tokens))
        try:
            pg.fill(0, toks, 0, rule, T)  # a first run: nothing is counted while kernels specialise
            with counter:
                pg.body(T)
        finally:
            for obj, n, orig, _ in patches:
                setattr(obj, n, orig)
            m.__dict__.pop("attention_inputs", None)
            m.__dict__.pop("mlp", None)
            for cls, orig in saved:
                cls.run = orig
        return _summary(counter.events, layer_of, layer_end[0], m.num_layers, T)
    finally:
        be.close()


def _summary(events, layer_of, end: int, L: int, T: int) -> dict:
    first = layer_of[0]
    per_layer = [Counter() for _ in range(L)]
    bounds = layer_of + [end]
    names: dict[str, Counter] = defaultdict(Counter)
    for li in range(L):
        for piece, name in events[bounds[li]:bounds[li + 1]]:
            per_layer[li][piece] += 1
            if li == 0:
                names[piece][name] += 1
    outside = Counter(p for p, _ in events[:first])
    return {"bucket": T, "total": len(events), "per_layer": [sum(c.values()) for c in per_layer],
            "layer0_by_piece": dict(per_layer[0]), "layer0_ops": {k: dict(v) for k, v in names.items()},
            "before_layers": sum(outside.values()),
            "before_layers_ops": dict(Counter(n for _, n in events[:first])),
            "after_layers": len(events) - end, "after_layers_ops": dict(Counter(n for _, n in events[end:]))}
