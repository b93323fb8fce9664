"""Real-size checks on a CUDA GPU (bf16, PAGE 16, window 512, rows up to 32K, NaN-poisoned pools).

Run on the GPU machine with ``python -m pytest tests/kernels -m gpu -q``. Tolerance: relative norm
error 2e-2 against float32/float64 references (bf16 inputs, fp32 accumulation).
"""

import pytest
import torch
from kvtestlib import assert_allocator_consistent, assert_same_rows, clone, flags_of, make_kv, relerr

from budgetllm.kernels import (
    dms_prefill_attention,
    num_free_pages,
    paged_decode_attention,
    release_rows,
    store_decode_kv,
    store_prefill_kv,
)
from budgetllm.kernels import reference as ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BF16_TOL = 2e-2


def _tokens(n, H, D, seed, p_evict, Hq=None, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    k = torch.randn(n, H, D, generator=g, device="cuda").to(dtype)
    v = torch.randn(n, H, D, generator=g, device="cuda").to(dtype)
    dec = torch.rand(n, H, generator=g, device="cuda") < p_evict
    q = torch.randn(n, Hq, D, generator=g, device="cuda").to(dtype) if Hq else None
    return q, k, v, dec


def _dense_rows(rows, q, k, v, flags, window, scale):
    """Dense DMS attention (float32) for the query rows `rows` of a whole sequence: [len(rows), Hq, D]."""
    T, Hq, D = q.shape
    H = k.shape[1]
    G = Hq // H
    kpos = torch.arange(T, device=q.device)
    d = rows[:, None] - kpos[None, :]
    out = torch.empty(len(rows), Hq, D, device=q.device, dtype=torch.float32)
    for h in range(H):
        keep = (d >= 0) & ((d <= window) | ~flags[:, h][None, :])
        s = torch.einsum("mgd,td->gmt", q[rows, h * G:(h + 1) * G].float(), k[:, h].float()) * scale
        p = torch.softmax(s.masked_fill(~keep[None], float("-inf")), -1)
        out[:, h * G:(h + 1) * G] = torch.einsum("gmt,td->mgd", p, v[:, h].float())
    return out


def _fill_direct(kv, layer, slot, head, n, seed):
    """Write a row of n random live entries straight into the pool (no store kernel; for attention tests)."""
    PAGE, D = kv.page_size, kv.head_dim
    npg = -(-n // PAGE)
    top = int(kv.alloc_state[0])
    pages = kv.free_stack[top:top + npg].long()
    kv.alloc_state[0] = top + npg
    kv.block_tables[layer, slot, head, :npg] = pages.int()
    kv.row_lens[layer, slot, head] = n
    g = torch.Generator(device="cuda").manual_seed(seed)
    idx = torch.arange(n, device="cuda")
    pg, off = pages[idx // PAGE], idx % PAGE
    kv.k_pool[pg, off] = torch.randn(n, D, generator=g, device="cuda").to(kv.k_pool.dtype)
    kv.v_pool[pg, off] = torch.randn(n, D, generator=g, device="cuda").to(kv.v_pool.dtype)
    kv.slot_pos[pg, off] = idx.int()
    kv.slot_flag[pg, off] = 0


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("num_splits", [1, 16, None])
def test_gpu_decode_attention_long_rows(D, num_splits):
    H, G, PAGE = 2, 6, 16
    lens = [0, 1, 777, 8197, 32765]
    kv = make_kv(P=6000, PAGE=PAGE, D=D, L=2, S=6, H=H, MAXP=2048, window=512, dtype=torch.bfloat16, seed=D)
    slots = [4, 0, 5, 2, 1]
    for i, (s, n) in enumerate(zip(slots, lens, strict=True)):
        for h in range(H):
            _fill_direct(kv, 1, s, h, max(0, n - 5 * h), seed=100 * i + h)
    q = torch.randn(len(slots), H * G, D, generator=torch.Generator(device="cuda").manual_seed(D), device="cuda")
    q = q.to(torch.bfloat16)
    sl = torch.tensor(slots, dtype=torch.int32, device="cuda")
    out = paged_decode_attention(q, kv, 1, sl, D**-0.5, num_splits=num_splits)
    exp = ref.paged_decode_attention(q, kv, 1, sl, D**-0.5)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert relerr(out, exp) < BF16_TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(("n", "num_splits"), [(1025, 9), (4353, 64), (32769, 64), (1025, 1)])
def test_gpu_fused_reduce_is_bit_identical_at_the_step_shapes(n, num_splits, dtype):
    """The in-kernel reduce (``reduce_cnt``) against the reduce kernel at the Qwen2.5-1.5B decode
    points of bench/decode_floor.py (H 2, G 6, D 128; 1K, 32K CR 8, 32K CR 1 rows and their splits),
    one batch row as at batch 1, 20 calls each: bit-identical, and every call gives the same bits (a
    race would read a partial before it is written; the partials start as NaN, tests/kernels/conftest.py
    poisons torch.empty). float32 is the exact twin: no rounding to bf16 after the combine, so any
    difference of the fp32 sums shows.

    The H200 run of f44dd4d (reduce_head inlined) found float32 identical at every shape but bf16 off
    at 32769 / 64 splits in all 20 calls: a deterministic difference of the bf16 compile, not a race
    (bench/NOTES.md v5: the inlined reduce took the bf16 K/V tile's layout, another summation tree).
    reduce_head is now one noinline device function, the same code in both kernels."""
    H, G, D = 2, 6, 128
    kv = make_kv(P=6000, PAGE=16, D=D, L=1, S=2, H=H, MAXP=2200, window=256, dtype=dtype, seed=n)
    for h in range(H):
        _fill_direct(kv, 0, 1, h, n - 3 * h, seed=h)
    g = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(1, H * G, D, generator=g, device="cuda").to(dtype)
    sl = torch.tensor([1], dtype=torch.int32, device="cuda")
    cnt = torch.zeros(H, dtype=torch.int32, device="cuda")
    two = paged_decode_attention(q, kv, 0, sl, D**-0.5, num_splits=num_splits)
    fused = [paged_decode_attention(q, kv, 0, sl, D**-0.5, num_splits=num_splits, reduce_cnt=cnt, pdl=True)
             for _ in range(20)]
    assert int(cnt.abs().sum()) == 0 and torch.isfinite(two).all()
    unlike = [i for i, f in enumerate(fused) if not torch.equal(f, fused[0])]
    assert not unlike, f"the fused reduce gave other bits in calls {unlike} than in call 0 (a race)"
    assert torch.equal(fused[0], two), f"{int((fused[0] != two).sum())} of {two.numel()} outputs differ"


def test_gpu_store_matches_reference():
    """Chunked prefill (1000 + 517 tokens) then 20 decode steps, window 512, against the reference."""
    H, D = 2, 128
    kv_ref = make_kv(P=2000, PAGE=16, D=D, L=1, S=3, H=H, MAXP=128, window=512, dtype=torch.bfloat16, seed=3)
    kv = clone(kv_ref)
    slots = [2, 0]
    sl = torch.tensor(slots, dtype=torch.int32, device="cuda")
    for i, lens in enumerate([[1000, 600], [517, 3]]):
        _, k, v, dec = _tokens(sum(lens), H, D, 10 + i, 0.8)
        cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32, device="cuda")
        store_prefill_kv(kv, k, v, dec, 0, sl, cu)
        ref.store_prefill_kv(kv_ref, k, v, dec, 0, sl, cu)
        for x in (kv, kv_ref):
            x.seq_pos[2] += lens[0]
            x.seq_pos[0] += lens[1]
    for step in range(20):
        _, k, v, dec = _tokens(2, H, D, 50 + step, 0.8)
        store_decode_kv(kv, k, v, dec, 0, sl)
        ref.store_decode_kv(kv_ref, k, v, dec, 0, sl)
        for x in (kv, kv_ref):
            x.seq_pos[sl.long()] += 1
    assert_same_rows(kv, kv_ref, slots=slots)
    assert_allocator_consistent(kv)
    release_rows(kv, sl)
    assert int(num_free_pages(kv)) == kv.num_pages
    assert_allocator_consistent(kv)


@pytest.mark.parametrize(("D", "old", "chunk"), [(128, 0, 32768), (64, 20000, 12000), (128, 3000, 777)])
def test_gpu_prefill_attention_and_store_32k(D, old, chunk):
    """Prefill `old` tokens (kernels), then attend a chunk over old rows + chunk; compare sampled query
    rows with dense DMS attention over the whole sequence; then decode one token and compare."""
    H, G, window, PAGE = 2, 6, 512, 16
    T = old + chunk
    kv = make_kv(P=2 * (T // PAGE + 64) + 64, PAGE=PAGE, D=D, L=1, S=2, H=H, MAXP=T // PAGE + 2, window=window,
                 dtype=torch.bfloat16, seed=D + old)
    q, k, v, dec = _tokens(T + 1, H, D, 7 + old, 0.85, Hq=H * G)
    flags = flags_of(dec)
    sl = torch.tensor([1], dtype=torch.int32, device="cuda")
    if old:
        store_prefill_kv(kv, k[:old], v[:old], dec[:old], 0, sl)
        kv.seq_pos[1] = old
    out = dms_prefill_attention(q[old:T], k[old:T], v[old:T], dec[old:T], kv, 0, sl, D**-0.5)
    assert torch.isfinite(out).all()
    g = torch.Generator(device="cuda").manual_seed(1)
    rows = torch.cat([torch.arange(min(64, chunk), device="cuda"), torch.arange(chunk - 64, chunk, device="cuda"),
                      torch.randint(0, chunk, (256,), generator=g, device="cuda")]).clamp(0, chunk - 1)
    dense = _dense_rows(rows + old, q[:T], k[:T], v[:T], flags_of(dec[:T]), window, D**-0.5)
    assert relerr(out[rows], dense) < BF16_TOL
    # store the chunk, decode token T, compare with the dense last row
    store_prefill_kv(kv, k[old:T], v[old:T], dec[old:T], 0, sl)
    kv.seq_pos[1] = T
    store_decode_kv(kv, k[T:T + 1], v[T:T + 1], dec[T:T + 1], 0, sl)
    assert int(kv.alloc_state[1]) == 0
    o1 = paged_decode_attention(q[T:T + 1], kv, 0, sl, D**-0.5)
    d1 = _dense_rows(torch.tensor([T], device="cuda"), q, k, v, flags, window, D**-0.5)
    assert relerr(o1, d1) < BF16_TOL
    kept = int(kv.row_lens[0, 1].max())
    assert kept < 0.3 * T + window + 2, kept  # ~85% of old tokens evicted


def test_gpu_decode_step_replays_in_a_cuda_graph():
    """store_decode_kv + paged_decode_attention for 2 layers + seq_pos advance, captured once in a CUDA
    graph and replayed 40 times (rows grow, pages are allocated, slots are reused): same as eager."""
    H, G, D = 2, 6, 128
    kv = make_kv(P=3000, PAGE=16, D=D, L=2, S=4, H=H, MAXP=128, window=512, dtype=torch.bfloat16, seed=9)
    slots, lens = [3, 1, 0], [600, 1, 1200]
    sl = torch.tensor(slots, dtype=torch.int32, device="cuda")
    cu = torch.tensor([0, 600, 601, 1801], dtype=torch.int32, device="cuda")
    for layer in range(2):
        _, k, v, dec = _tokens(sum(lens), H, D, 100 + layer, 0.8)
        store_prefill_kv(kv, k, v, dec, layer, sl, cu)
    kv.seq_pos[sl.long()] += torch.tensor(lens, dtype=torch.int32, device="cuda")
    q = torch.zeros(3, H * G, D, dtype=torch.bfloat16, device="cuda")
    kn = torch.zeros(3, H, D, dtype=torch.bfloat16, device="cuda")
    vn = torch.zeros_like(kn)
    dn = torch.zeros(3, H, dtype=torch.bool, device="cuda")
    idx = sl.long()

    def step(x):
        outs = []
        for layer in range(2):
            store_decode_kv(x, kn, vn, dn, layer, sl)
            outs.append(paged_decode_attention(q, x, layer, sl, D**-0.5, num_splits=None if layer else 4))
        x.seq_pos[idx] += 1
        return torch.stack(outs)

    step(clone(kv))  # compile outside the capture
    eager = clone(kv)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(kv)
    for i in range(40):
        qi, ki, vi, di = _tokens(3, H, D, 500 + i, 0.8, Hq=H * G)
        q.copy_(qi[0:3])
        kn.copy_(ki)
        vn.copy_(vi)
        dn.copy_(di)
        graph.replay()
        exp = step(eager)
        assert torch.equal(static_out, exp), i
    assert torch.equal(kv.seq_pos, eager.seq_pos)
    assert_same_rows(kv, eager, slots=slots)
    assert_allocator_consistent(kv)
    assert int(kv.alloc_state[1]) == 0
