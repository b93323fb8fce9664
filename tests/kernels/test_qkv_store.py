"""The fused first kernel of a decode layer (kernels/qkv_store.py: norm -> QKV GEMM -> q/k norm, RoPE,
DMS decision -> KV store) against (a) the three kernels it replaces with the same GEMM plan, and
(b) the naive twin (``reference.qkv_store``: torch ops + the one-by-one reference store).

(a) is bit for bit (``torch.equal``) in float32 AND bf16: the fused kernel runs the very device
functions of ``gemv``, ``qkv_rope`` and ``store_decode_kv``, so no tolerance is needed.
(b) in float32 only, 1e-5 relative on q and K/V: the GEMM's K sum runs in another order than
torch's (a few fp32 ulps of the sum); positions, flags and row lengths (every eviction decision)
must be identical. Fresh random inputs per case; rows prefilled first so that eviction, page reuse
and new pages all happen; every ``torch.empty`` is NaN-poisoned (conftest).
"""

import pytest
import torch
from kvtestlib import DEVICE, assert_same_rows, clone, make_kv, random_tokens, relerr

from budgetllm.kernels import qkv_rope, store_decode_kv, store_prefill_kv
from budgetllm.kernels import reference as ref
from budgetllm.kernels.gemv import GemvWorkspace, gemv
from budgetllm.kernels.qkv_store import head_plan, qkv_store

Hq, H, D, K = 4, 2, 16, 40


def _case(seed, M, dtype, variant):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype).to(DEVICE)  # noqa: E731
    N = (Hq + 2 * H) * D
    a = {"x": r(M, K, scale=2.0), "w": r(N, K, scale=K ** -0.5), "nw": r(K) + 1.0,
         "bias": r(N) if variant == "adapter" else None, "cos": r(64, D), "sin": r(64, D),
         "qk_norm": r(Hq + H, D) + 1.0 if variant == "borrowed" else None,
         "borrowed": (Hq // H, 1.7, 0.3) if variant == "borrowed" else None}
    base = torch.rand(M, H, generator=g) < 0.5
    thr = torch.randn(M, H, generator=g, dtype=torch.float64) * 0.5
    uses = torch.arange(M) % 3 != 1  # row 1 keeps its base decision
    lg_in = torch.randn(M, H, generator=g) if variant == "adapter" else None
    a["base"] = base.to(DEVICE)
    a["decide"] = None if variant == "plain" else (thr.to(DEVICE), base.to(DEVICE), uses.to(DEVICE),
                                                   lg_in.to(DEVICE) if lg_in is not None else None)
    return a


def _kv(dtype, seed, slots, lens):
    kv = make_kv(D=D, H=H, L=2, S=5, P=120, PAGE=4, window=3, dtype=dtype, seed=seed)
    _, k, v, dec = random_tokens(sum(lens), H, D, dtype, seed + 1)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    store_prefill_kv(kv, k, v, dec, 1, sl, cu)
    kv.seq_pos[sl.long()] += torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    return kv, sl


def _run(fn, a, kv, sl, layer=1, **kw):
    pos = kv.seq_pos[sl.long()].long()
    return fn(a["x"], a["w"], a["bias"], (a["nw"], 1e-6), a["cos"], a["sin"], pos, Hq, H, D, kv, layer, sl, a["base"],
              qk_norm=a["qk_norm"], borrowed=a["borrowed"], decide=a["decide"], **kw)


def _unfused(x, w, bias, norm, cos, sin, pos, Hq_, H_, D_, kv, layer, slots, base, qk_norm=None, eps=1e-6,
             borrowed=None, decide=None, ws=None, plan=None, pdl=False):
    """The three kernels of the 8-launch layer, with the fused kernel's plan."""
    qkv = gemv(x, w, bias=bias, norm=norm, ws=ws, plan=plan)
    q, k, _, dec = qkv_rope(qkv, cos, sin, pos, Hq_, H_, D_, qk_norm=qk_norm, eps=eps, borrowed=borrowed, decide=decide)
    v = qkv[:, (Hq_ + H_) * D_:].reshape(-1, H_, D_)
    store_decode_kv(kv, k, v, base if dec is None else dec, layer, slots)
    return q


# (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages): BLOCK_N 32 is narrowed to 16 (= D), 8 splits a head into
# two column blocks; split-K 1, 2 and 3 (uneven)
PLANS = [(32, 16, 1, 4, 1), (8, 16, 2, 4, 1), (16, 8, 3, 4, 1)]


@pytest.mark.parametrize("variant", ["plain", "adapter", "borrowed"])
@pytest.mark.parametrize(("M", "slots", "plan"), [(1, [2], PLANS[0]), (3, [0, 3, 1], PLANS[1]), (2, [4, 1], PLANS[2])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_the_three_kernels_bit_for_bit(variant, M, slots, plan, dtype):
    seed = 11 * M + len(variant)
    a = _case(seed, M, dtype, variant)
    kv_f, sl = _kv(dtype, seed, slots, [5, 9, 2][:M])
    kv_u = clone(kv_f)
    ws = GemvWorkspace(DEVICE)
    for step in range(3):  # three decode steps: the counters must be back at zero after each call
        q_f = _run(qkv_store, a, kv_f, sl, ws=ws, plan=plan)
        q_u = _run(_unfused, a, kv_u, sl, plan=head_plan(plan, D))
        assert torch.equal(q_f, q_u), f"step {step}"
        assert_same_rows(kv_f, kv_u)
        assert torch.equal(kv_f.alloc_state, kv_u.alloc_state) and torch.equal(kv_f.slot_oom, kv_u.slot_oom)
        for kv in (kv_f, kv_u):
            kv.seq_pos[sl.long()] += 1
        a["x"] = a["x"].roll(1, 1)
    assert int(ws.cnt.abs().sum()) == 0 and int(ws.hcnt.abs().sum()) == 0


@pytest.mark.parametrize("variant", ["plain", "adapter", "borrowed"])
@pytest.mark.parametrize(("M", "slots", "plan"), [(1, [3], PLANS[1]), (4, [0, 2, 4, 1], PLANS[2])])
def test_fused_matches_the_naive_twin_float32(variant, M, slots, plan):
    seed = 7 * M + len(variant)
    a = _case(seed, M, torch.float32, variant)
    kv_f, sl = _kv(torch.float32, seed, slots, [6, 1, 10, 3][:M])
    kv_r = clone(kv_f)
    for _ in range(4):
        q_f = _run(qkv_store, a, kv_f, sl, plan=plan)
        q_r = _run(ref.qkv_store, a, kv_r, sl)
        assert relerr(q_f, q_r) < 1e-5
        assert torch.equal(kv_f.row_lens, kv_r.row_lens)  # every eviction decision
        for s in slots:
            for h in range(H):
                pf, ff, kf, vf = ref.read_row(kv_f, 1, s, h)
                pr, fr, kr, vr = ref.read_row(kv_r, 1, s, h)
                assert torch.equal(pf, pr) and torch.equal(ff, fr)
                assert relerr(kf, kr) < 1e-5 and relerr(vf, vr) < 1e-5
        for kv in (kv_f, kv_r):
            kv.seq_pos[sl.long()] += 1
        a["x"] = torch.randn_like(a["x"])


def test_fused_rejects_more_than_four_rows():
    a = _case(0, 5, torch.float32, "plain")
    kv, sl = _kv(torch.float32, 0, [0, 1, 2, 3, 4], [1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="at most 4 rows"):
        _run(qkv_store, a, kv, sl)


def test_head_plan_narrows_the_column_block_to_divide_the_head():
    assert head_plan((64, 512, 1, 8, 1), 128)[0] == 64
    assert head_plan((256, 512, 1, 8, 1), 128)[0] == 128
    assert head_plan((16, 512, 1, 8, 1), 80) == (16, 512, 1, 8, 1)
    assert head_plan((32, 512, 1, 8, 1), 80)[0] == 16


# -- real sizes on the GPU (bf16): still bit for bit against the three kernels, also under PDL in a graph
@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 4])
@pytest.mark.parametrize("red", [False, True])
def test_fused_bf16_real_sizes_in_a_cuda_graph_with_pdl(M, red):
    """The Qwen2.5-1.5B layer (12 q heads, 2 KV heads, D 128, hidden 1536), the default plan (or the
    same with the per-iteration reduction): replayed with PDL, bit-identical to the three kernels."""
    from budgetllm.kernels.gemv import gemv_plan

    global Hq, H, D, K
    saved = (Hq, H, D, K)
    Hq, H, D, K = 12, 2, 128, 1536
    try:
        a = _case(5 + M, M, torch.bfloat16, "borrowed")
        kv_f = make_kv(D=D, H=H, L=2, S=5, P=400, PAGE=16, MAXP=16, window=16, dtype=torch.bfloat16, seed=M)
        sl = torch.arange(M, dtype=torch.int32, device=DEVICE)
        kv_f.seq_pos[sl.long()] = torch.tensor([37, 3, 16, 50][:M], dtype=torch.int32, device=DEVICE)  # < 64 - 3: the cos/sin tables
        kv_u = clone(kv_f)
        plan = gemv_plan((Hq + 2 * H) * D, K, torch.device(DEVICE), M)
        plan = (*plan, 1) if red else plan
        ws = GemvWorkspace(DEVICE)
        _run(qkv_store, a, clone(kv_f), sl, ws=ws, plan=plan, pdl=True)  # compile and load before capturing
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            q_f = _run(qkv_store, a, kv_f, sl, ws=ws, plan=plan, pdl=True)
        for _ in range(3):
            g.replay()
            q_u = _run(_unfused, a, kv_u, sl, plan=head_plan(plan, D))
            torch.cuda.synchronize()
            assert torch.equal(q_f, q_u)
            assert_same_rows(kv_f, kv_u, layers=[1], slots=sl.tolist())
            for kv in (kv_f, kv_u):
                kv.seq_pos[sl.long()] += 1
        assert int(ws.hcnt.abs().sum()) == 0
    finally:
        Hq, H, D, K = saved


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("splits", [17, 64])
def test_attention_reduce_inside_the_kernel_real_sizes(splits, dtype):
    """The 1.5B attention (2 KV heads, G 6, D 128) over ~3K-entry rows, even and balanced splits: the
    reduce inside the kernel bit-identical to the reduce kernel (one noinline ``reduce_head``), in bf16
    and in float32 (the exact twin: no bf16 rounding to hide a different fp32 sum)."""
    from budgetllm.kernels import paged_decode_attention

    kv = make_kv(D=128, H=2, L=1, S=3, P=1200, PAGE=16, MAXP=400, window=16, dtype=dtype, seed=3)
    _, k, v, dec = random_tokens(3000, 2, 128, dtype, 4, p_evict=0.1)
    store_prefill_kv(kv, k, v, dec, 0, torch.tensor([1], dtype=torch.int32, device=DEVICE))
    g = torch.Generator(device=DEVICE).manual_seed(splits)
    q = torch.randn(1, 12, 128, generator=g, device=DEVICE).to(dtype)
    sl = torch.tensor([1], dtype=torch.int32, device=DEVICE)
    cnt = torch.zeros(8, dtype=torch.int32, device=DEVICE)
    for balanced in (False, True):
        two = paged_decode_attention(q, kv, 0, sl, 128 ** -0.5, num_splits=splits, balanced=balanced)
        fused = paged_decode_attention(q, kv, 0, sl, 128 ** -0.5, num_splits=splits, balanced=balanced, reduce_cnt=cnt,
                                       pdl=True)
        assert int(cnt.abs().sum()) == 0 and torch.isfinite(two).all()
        assert torch.equal(fused, two), (balanced, int((fused != two).sum()))
