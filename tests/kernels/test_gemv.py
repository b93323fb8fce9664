"""gemv (skinny GEMM with fused norm / bias / residual / silu-mul / split-K) against its torch twin.

The twin (``kernels.reference.gemv``) is the chain of torch ops the kernel replaces, in the same
dtype; the kernel differs only in the order of the K sum. So in float32 (IEEE dot) the relative
error is a few fp32 ulps of the sum: tolerance 1e-5. These float32 tests are the exact twins of the
bf16 GPU tests, whose tolerance (1e-2) is the one bf16 operands and outputs allow (METHOD: bf16
lands between 1e-3 and 1e-2: each output is rounded to 8 bits of mantissa, 2^-9 = 2e-3 relative,
and the fused silu * up rounds three times).

Every ``torch.empty`` is NaN-poisoned (tests/kernels/conftest.py): an unwritten output or partial
fails. Odd sizes: M, N and K are not multiples of the tiles, split-K splits are uneven.
"""

import pytest
import torch
from kvtestlib import DEVICE

from budgetllm.kernels import reference as ref
from budgetllm.kernels.gemv import GemvWorkspace, gemv
from budgetllm.kernels.gemv_plans import plan_for


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert not torch.isnan(a).any()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _case(seed, M, N, K, dtype=torch.float32, glu=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype).to(DEVICE)  # noqa: E731
    return {"x": r(M, K, scale=2.0), "w": r(2 * N if glu else N, K, scale=K ** -0.5), "bias": r(N),
            "res": r(M, N), "nw": r(K) + 1.0}


# (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages[, red]): one tile, several tiles, split-K 3 (uneven), split-K 2,
# split-K 2 with the per-iteration reduction (red)
PLANS = [(16, 16, 1, 4, 1), (16, 32, 1, 4, 2), (32, 16, 3, 4, 1), (16, 64, 2, 4, 1), (16, 32, 2, 4, 1, 1)]


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize(("M", "N", "K"), [(1, 37, 100), (3, 20, 129), (16, 33, 70)])
def test_gemv_plain_bias_residual(plan, M, N, K):
    c = _case(M * 1000 + N + K, M, N, K)
    ws = GemvWorkspace(DEVICE, 1 << 14, 64)
    for kw in ({}, {"bias": c["bias"]}, {"residual": c["res"]}, {"bias": c["bias"], "residual": c["res"]}):
        y = gemv(c["x"], c["w"], ws=ws, plan=plan, **kw)
        assert y.shape == (M, N) and y.dtype == torch.float32
        assert _rel(y, ref.gemv(c["x"], c["w"], **kw)) < 1e-5
    assert int(ws.cnt.abs().sum()) == 0  # every split-K counter was reset for the next call


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize(("M", "N", "K"), [(1, 19, 96), (5, 40, 200)])
def test_gemv_norm_prologue_and_glu(plan, M, N, K):
    """RMSNorm prologue (rstd over all of K, also when K is split), then silu(gate) * up."""
    c = _case(M + N + K, M, N, K, glu=True)
    norm = (c["nw"], 1e-6)
    ws = GemvWorkspace(DEVICE, 1 << 14, 64)
    want = ref.gemv(c["x"], c["w"], norm=norm, glu=True)
    for pairs in (False, True):  # gate and up in one program, or in two that meet in the partials
        y = gemv(c["x"], c["w"], norm=norm, glu=True, plan=plan, ws=ws, glu_pairs=pairs)
        assert y.shape == (M, N)
        assert _rel(y, want) < 1e-5
    assert int(ws.cnt.abs().sum()) == 0
    plain = c["w"][:N].contiguous()
    y2 = gemv(c["x"], plain, norm=norm, out_f32=True, plan=plan)
    assert y2.dtype == torch.float32 and _rel(y2, ref.gemv(c["x"], plain, norm=norm)) < 1e-5


def test_gemv_default_plan_and_split_k_are_deterministic():
    c = _case(7, 2, 50, 3000)
    a = gemv(c["x"], c["w"], residual=c["res"])
    b = gemv(c["x"], c["w"], residual=c["res"], plan=(16, 128, 3, 4, 1))
    bb = gemv(c["x"], c["w"], residual=c["res"], plan=(16, 128, 3, 4, 1))
    assert torch.equal(b, bb)
    assert _rel(a, ref.gemv(c["x"], c["w"], residual=c["res"])) < 1e-5
    assert _rel(b, a) < 1e-5


# the fastest plans of the H200 sweeps at one row (bench/results/decode_floor-h200.json, "best_plans";
# the wide two from the wider sweep of decode_floor-l5-h200.json: gate/up (8, 512, 1, 4, 1) 23.02 us and
# (8, 512, 1, 4, 3) 23.21 vs the old rule's (16, 512, 1, 4, 3) 23.75; LM head (8, 512, 1, 4, 3) 126.2 vs 130.7)
SWEPT_BEST = {(2048, 1536, False): (8, 1024, 1, 8, 1), (1536, 1536, False): (8, 1024, 1, 8, 1),
              (8960, 1536, True): (8, 512, 1, 4, 3), (1536, 8960, False): (8, 1024, 2, 8, 1),
              (960, 576, False): (8, 1024, 1, 8, 1), (1536, 576, True): (8, 1024, 1, 8, 1),
              (576, 1536, False): (8, 1024, 1, 8, 1), (151936, 1536, False): (8, 512, 1, 4, 3)}


def test_plan_rule_reproduces_the_swept_best_plans():
    for (N, K, glu), want in SWEPT_BEST.items():
        assert plan_for(N, K, 1, 2, 132) == want, (N, K, glu)
    bn, bk, _, _, _ = plan_for(2048, 1536, 4, 2, 132)  # 4 rows: a quarter of the K tile (registers)
    assert (bn, bk) == (8, 256)
    assert plan_for(2048, 1536, 1, 4, 132)[1] == 512  # fp32: same bytes per tile


def test_the_plan_rule_lives_in_gemv_plans_and_gemv_re_exports_it():
    """Callers import the plan names from kernels.gemv (qkv_store, decode_layer, bench): the same objects."""
    from budgetllm.kernels import gemv as launch
    from budgetllm.kernels import gemv_plans

    for name in gemv_plans.__all__:
        assert getattr(launch, name) is getattr(gemv_plans, name), name
        assert name in launch.__all__, name
    assert gemv_plans.plan_for.__module__ == "budgetllm.kernels.gemv_plans"
    mp = gemv_plans.m_pad(3)
    assert (mp, gemv_plans.mode(mp, []), gemv_plans.mode(mp, [True]), gemv_plans.mode(gemv_plans.m_pad(5), [])) == (4, 0, 2, 1)


def test_gemv_rejects_more_than_16_rows():
    c = _case(1, 17, 8, 16)
    with pytest.raises(ValueError, match="at most 16"):
        gemv(c["x"], c["w"])


# -- real sizes on the GPU (bf16) --------------------------------------------------------------
SHAPES = {  # (N, K, glu) of the Qwen2.5-1.5B layer's GEMMs and SmolLM2-135M's down projection
    "qkv": (2048, 1536, False), "o": (1536, 1536, False), "gate_up": (8960, 1536, True),
    "down": (1536, 8960, False), "smol_down": (576, 1536, False),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("M", [1, 4, 16])
def test_gemv_bf16_real_sizes(name, M):
    N, K, glu = SHAPES[name]
    c = _case(M * 7 + N, M, N, K, dtype=torch.bfloat16, glu=glu)
    kw = {"norm": (c["nw"], 1e-6), "glu": True} if glu else {"residual": c["res"], "bias": c["bias"]}
    y = gemv(c["x"], c["w"], **kw)
    want = ref.gemv(c["x"], c["w"], **kw)
    assert _rel(y, want) < 1e-2
    if glu:
        assert _rel(gemv(c["x"], c["w"], glu=True, glu_pairs=False, norm=kw["norm"]), want) < 1e-2
        assert _rel(gemv(c["x"], c["w"], glu=True, glu_pairs=True, norm=kw["norm"]), want) < 1e-2
    # the float32 twin of the same case: sum order only
    c32 = {k: v.float() for k, v in c.items()}
    kw32 = {"norm": (c32["nw"], 1e-6), "glu": True} if glu else {"residual": c32["res"], "bias": c32["bias"]}
    assert _rel(gemv(c32["x"], c32["w"], **kw32), ref.gemv(c32["x"], c32["w"], **kw32)) < 1e-5


@pytest.mark.gpu
def test_gemv_pdl_chain_in_a_cuda_graph_equals_plain_launches():
    """Three dependent PDL launches (each reads the previous output), captured and replayed, give
    bit-identical results to plain launches with the same plans."""
    c = _case(3, 2, 1536, 1536, dtype=torch.bfloat16)
    w2 = _case(4, 2, 1536, 1536, dtype=torch.bfloat16)["w"]
    ws = GemvWorkspace(DEVICE)

    def chain(pdl):
        a = gemv(c["x"], c["w"], norm=(c["nw"], 1e-6), ws=ws, pdl=pdl)
        b = gemv(a, w2, residual=c["x"], ws=ws, pdl=pdl)
        return gemv(b, c["w"], residual=a, ws=ws, pdl=pdl)

    want = chain(False)
    assert torch.equal(chain(True), want)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = chain(True)
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want)
