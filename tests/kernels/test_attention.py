"""paged_decode_attention and dms_prefill_attention against reference.py and the dense DMS oracle."""

import pytest
import torch
from kvtestlib import DEVICE, clone, flags_of, make_kv, random_tokens, relerr

from budgetllm.kernels import dms_prefill_attention, paged_decode_attention, store_decode_kv, store_prefill_kv
from budgetllm.kernels import reference as ref

# bf16 only on GPU: the interpreter has no bf16 dot. Why these tolerances (relative norm error against
# the float64 reference): float32, the kernel's softmax runs in exp2 of (q.k * scale * log2 e) with fp32
# sums in another order (and ex2.approx on the GPU): ~1e-6 per entry, 1e-4 with room; float16, q, K, V,
# the probabilities fed to the P.V dot and the output are rounded to 11 mantissa bits (2^-11 = 5e-4
# relative each), which compound to ~1e-3: 5e-3. The float32 cases are the exact twins of the fp16 ones.
TOL = {torch.float32: 1e-4, torch.float16: 5e-3}


def _fill(kv, slots, lens, seed, dtype, layer=0, p_evict=0.6):
    """Store one random sequence per slot (reference store), set seq_pos; return its tokens."""
    H, D = kv.block_tables.shape[2], kv.head_dim
    seqs = []
    for i, (s, n) in enumerate(zip(slots, lens, strict=True)):
        _, k, v, dec = random_tokens(n, H, D, dtype, seed + i, p_evict)
        ref.store_prefill_kv(kv, k, v, dec, layer, torch.tensor([s], dtype=torch.int32))
        kv.seq_pos[s] = n
        seqs.append((k, v, dec))
    return seqs


@pytest.mark.parametrize(("D", "G", "num_splits", "dtype", "block_n", "seed"), [
    (16, 3, 1, torch.float32, 16, 1),
    (16, 3, 3, torch.float32, 16, 2),
    (32, 3, None, torch.float16, 32, 3),
    (16, 1, 2, torch.float32, 64, 4),
    (32, 5, 7, torch.float16, 16, 5),
])
def test_decode_attention_matches_reference(D, G, num_splits, dtype, block_n, seed):
    H = 2
    kv = make_kv(D=D, H=H, S=6, L=1, dtype=dtype, window=5, seed=seed)
    slots, lens = [5, 0, 2, 3], [0, 40, 7, 23]
    _fill(kv, slots, lens, seed * 10, dtype)
    kv.seq_pos.zero_()  # unused by decode attention
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, H * G, D, generator=g).to(dtype).to(DEVICE)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, kv, 0, sl, D**-0.5, num_splits=num_splits, block_n=block_n)
    exp = ref.paged_decode_attention(q, kv, 0, sl, D**-0.5)
    assert torch.equal(out[0], torch.zeros_like(out[0])), "an empty row must give zeros"
    assert relerr(out, exp) < TOL[dtype]


@pytest.mark.parametrize(("num_splits", "block_n", "dtype", "seed"), [
    (2, 16, torch.float32, 1), (5, 16, torch.float32, 2), (3, 32, torch.float16, 3), (8, 16, torch.float32, 4),
])
def test_balanced_decode_attention_on_uneven_heads(num_splits, block_n, dtype, seed):
    """Row lengths that differ a lot between the KV heads of a sequence (as real DMS decisions give):
    the balanced split (programs shared out by row length) matches the reference and the plain split.
    One sequence has an empty head, one has all heads empty."""
    H, G, D = 4, 2, 16
    kv = make_kv(D=D, H=H, S=6, L=1, dtype=dtype, window=5, seed=seed, MAXP=40)
    slots, lens = [1, 4, 2], [150, 60, 0]
    _fill(kv, slots, lens, seed * 10, dtype, p_evict=0.2)
    cut = torch.tensor([[1.0, 0.02, 0.0, 0.3], [0.1, 1.0, 0.5, 0.05]])
    for s, c in zip(slots[:2], cut, strict=True):  # shorter rows are prefixes of valid rows
        kv.row_lens[0, s] = (kv.row_lens[0, s].cpu() * c).to(torch.int32).to(DEVICE)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, H * G, D, generator=g).to(dtype).to(DEVICE)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, kv, 0, sl, D**-0.5, num_splits=num_splits, block_n=block_n, balanced=True)
    plain = paged_decode_attention(q, kv, 0, sl, D**-0.5, num_splits=num_splits, block_n=block_n)
    exp = ref.paged_decode_attention(q, kv, 0, sl, D**-0.5)
    assert torch.equal(out[2], torch.zeros_like(out[2])) and torch.equal(out[0, 2 * G:3 * G], torch.zeros_like(out[0, :G]))
    assert relerr(out, exp) < TOL[dtype] and relerr(out, plain) < TOL[dtype]


@pytest.mark.parametrize(("num_splits", "balanced", "dtype", "seed"), [
    (3, False, torch.float32, 1), (5, True, torch.float32, 2), (4, False, torch.float16, 3),
    (6, True, torch.float16, 4), (1, False, torch.float32, 5),
])
def test_reduce_inside_the_attention_kernel_equals_the_reduce_kernel(num_splits, balanced, dtype, seed):
    """``reduce_cnt``: the last program of each (sequence, KV head) combines the partials itself. Same
    partials, same combine function, same order: bit-identical to the two-kernel path (no tolerance;
    fp16 included), and within TOL of the float64 reference (fresh random rows, one empty, uneven heads)."""
    H, G, D = 4, 3, 16
    kv = make_kv(D=D, H=H, S=6, L=1, dtype=dtype, window=5, seed=seed, MAXP=40)
    slots, lens = [3, 0, 5], [97, 0, 41]
    _fill(kv, slots, lens, seed * 10, dtype, p_evict=0.3)
    kv.row_lens[0, 3] = (kv.row_lens[0, 3].cpu() * torch.tensor([1.0, 0.1, 0.0, 0.6])).to(torch.int32).to(DEVICE)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, H * G, D, generator=g).to(dtype).to(DEVICE)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    cnt = torch.zeros(3 * H, dtype=torch.int32, device=DEVICE)
    kw = dict(num_splits=num_splits, block_n=16, balanced=balanced)
    for _ in range(2):  # the counters are back at zero after a call
        fused = paged_decode_attention(q, kv, 0, sl, D**-0.5, reduce_cnt=cnt, **kw)
        two = paged_decode_attention(q, kv, 0, sl, D**-0.5, **kw)
        assert torch.equal(fused, two) and int(cnt.abs().sum()) == 0
    assert relerr(fused, ref.paged_decode_attention(q, kv, 0, sl, D**-0.5)) < TOL[dtype]


@pytest.mark.parametrize(("window", "lens", "chunk", "dtype", "seed"), [
    (5, [0, 0, 0], [29, 1, 17], torch.float32, 1),          # first prefill, empty rows
    (7, [12, 3, 0], [20, 9, 6], torch.float32, 2),          # chunked prefill on top of old rows
    (6, [33, 1, 9], [1, 24, 40], torch.float16, 3),
    (0, [8, 15, 2], [14, 3, 19], torch.float32, 4),
])
def test_prefill_attention_matches_reference_and_dense(window, lens, chunk, dtype, seed):
    H, G, D = 2, 3, 16
    kv = make_kv(D=D, H=H, S=4, L=1, dtype=dtype, window=window, seed=seed)
    slots = [3, 0, 1]
    old = _fill(kv, slots, lens, seed * 10, dtype)
    N = sum(chunk)
    q, k, v, dec = random_tokens(N, H, D, dtype, seed * 10 + 7, 0.6, Hq=H * G)
    cu = torch.tensor([0] + torch.tensor(chunk).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    out = dms_prefill_attention(q, k, v, dec, kv, 0, sl, D**-0.5, cu_seqlens=cu, max_seqlen=max(chunk),
                                block_m=16, block_n=16)
    exp = ref.dms_prefill_attention(q, k, v, dec, kv, 0, sl, D**-0.5, cu_seqlens=cu)
    assert relerr(out, exp) < TOL[dtype]
    # the whole sequence through the dense DMS mask: the chunk's rows must agree
    for b in range(3):
        lo, hi = int(cu[b]), int(cu[b + 1])
        ok, ov, od = old[b]
        kk, vv, dd = torch.cat([ok, k[lo:hi]]), torch.cat([ov, v[lo:hi]]), torch.cat([od, dec[lo:hi]])
        qq = torch.cat([torch.zeros(lens[b], H * G, D, dtype=dtype, device=DEVICE), q[lo:hi]])
        dense = ref.dms_attention_dense(qq.double(), kk.double(), vv.double(), flags_of(dd), window, D**-0.5)
        assert relerr(out[lo:hi], dense[lens[b]:]) < TOL[dtype]


def test_decode_loop_matches_dense_oracle():
    """Prefill with the kernels, then decode 30 tokens: every step's decode attention equals the
    dense DMS attention of the last token over the whole history (the layout's core promise)."""
    H, G, D, window, seed = 2, 3, 16, 5, 77
    kv = make_kv(D=D, H=H, S=3, L=1, window=window, seed=seed)
    slots = [2, 0]
    q, k, v, dec = random_tokens(11, H, D, torch.float32, seed, 0.7, Hq=H * G)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    hist = [[k, v, dec], [k[:0], v[:0], dec[:0]]]
    store_prefill_kv(kv, k, v, dec, 0, sl[:1])
    kv.seq_pos[2] = 11
    kv_ref = clone(kv)
    for step in range(30):
        qn, kn, vn, dn = random_tokens(2, H, D, torch.float32, seed + 1 + step, 0.7, Hq=H * G)
        store_decode_kv(kv, kn, vn, dn, 0, sl)
        ref.store_decode_kv(kv_ref, kn, vn, dn, 0, sl)
        out = paged_decode_attention(qn, kv, 0, sl, D**-0.5, num_splits=1 + step % 3, block_n=16)
        for b in range(2):
            hist[b] = [torch.cat([hist[b][0], kn[b:b + 1]]), torch.cat([hist[b][1], vn[b:b + 1]]),
                       torch.cat([hist[b][2], dn[b:b + 1]])]
            hk, hv, hd = hist[b]
            T = hk.shape[0]
            qq = torch.zeros(T, H * G, D, dtype=torch.float64, device=DEVICE)
            qq[-1] = qn[b]
            dense = ref.dms_attention_dense(qq, hk.double(), hv.double(), flags_of(hd), window, D**-0.5)[-1]
            assert relerr(out[b], dense) < 1e-4, (step, b)
        assert relerr(out, ref.paged_decode_attention(qn, kv_ref, 0, sl, D**-0.5)) < 1e-4
        for s in slots:
            kv.seq_pos[s] += 1
            kv_ref.seq_pos[s] += 1
    # DMS really evicted: rows are shorter than the history
    assert int(kv.row_lens[0, 2].max()) < 41


def test_dense_reference_without_flags_is_causal_sdpa():
    q, k, v, _ = random_tokens(19, 2, 16, torch.float64, 5, Hq=6)
    flags = torch.zeros(19, 2, dtype=torch.bool, device=DEVICE)
    out = ref.dms_attention_dense(q, k, v, flags, 3, 0.25)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(3, 1).transpose(0, 1), v.repeat_interleave(3, 1).transpose(0, 1),
        is_causal=True, scale=0.25).transpose(0, 1)
    assert relerr(out, sdpa) < 1e-10
