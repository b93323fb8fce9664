"""add_rms_norm / silu_mul / qkv_rope against their torch twins in kernels.reference.

The twins are the engine's former eager code (FusedModel before fusion, rules.layer_decisions),
so these tests are about roundings. Everything elementwise must be bit-identical. The one allowed
difference is the order of the RMS sum of squares (a few-ulp fp32 difference of the mean, so of
rstd), checked two ways: integer-valued inputs, whose sums are exact in any order, must give
bit-identical outputs; random inputs get the tolerance that rstd difference can explain.
Rows are a multiple of 4 long where the exact-sum tests rely on it: on CUDA, torch's rms_norm
computes a plain IEEE sum / C only on its vectorised path (every real hidden size and head dim).

bfloat16 runs on CUDA only: the interpreter truncates fp32 -> bf16 casts instead of rounding.
Seen on an H100 (torch 2.11, triton 3.6): bf16 outputs all bit-identical at real sizes, silu_mul
bit-identical in every dtype (both call expf).
"""

import pytest
import torch
import triton
from kvtestlib import DEVICE

from budgetllm.kernels import add_rms_norm, qkv_rope, silu_mul
from budgetllm.kernels import reference as ref

INTERPRET = bool(triton.knobs.runtime.interpret)
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=pytest.mark.skipif(INTERPRET, reason="interpreter truncates to bf16"))]


def ulp_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance of two same-dtype float tensors in units in the last place (0: same value)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    bits = torch.finfo(a.dtype).bits
    as_int = {32: torch.int32, 16: torch.int16}[bits]

    def ordered(t):  # sign-magnitude bits -> integers in value order (+0 and -0 both 0)
        i = t.contiguous().view(as_int).long()
        mag = i & ((1 << (bits - 1)) - 1)
        return torch.where(i < 0, -mag, mag)

    return (ordered(a) - ordered(b)).abs()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(g, *shape, dtype, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _ints(g, *shape, dtype, lo=-8, hi=9):
    return torch.randint(lo, hi, shape, generator=g).to(dtype).to(DEVICE)


# -- add_rms_norm --------------------------------------------------------------------------------
# the mean may differ by a few fp32 ulps (sum order), so rstd too; h = round(round(x*rstd)*w) carries
# that through two roundings (4 ulps seen in fp32 on an H100 at C = 896); in 16-bit dtypes the first
# rounding absorbs it, but for a rare 1-ulp flip
H_ULPS = {torch.float32: 8, torch.float16: 1, torch.bfloat16: 1}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("N", "C"), [(1, 33), (5, 200), (3, 1000), (2, 8192)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm_random(dtype, N, C, with_residual):
    """x_sum bit-identical to torch's x + residual (or the very same tensor); h within H_ULPS of rms_norm."""
    g = _gen(N * 10000 + C)
    x, w = _rand(g, N, C, dtype=dtype), _rand(g, C, dtype=dtype)
    res = _rand(g, N, C, dtype=dtype, scale=3.0) if with_residual else None
    x_sum, h = add_rms_norm(x, res, w, 1e-6)
    r_sum, r_h = ref.add_rms_norm(x, res, w, 1e-6)
    if res is None:
        assert x_sum is x
    assert torch.equal(x_sum, r_sum)
    assert h.shape == (N, C) and h.dtype == dtype and h.is_contiguous()
    assert int(ulp_diff(h, r_h).max()) <= H_ULPS[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("N", "C"), [(3, 52), (2, 896)])
def test_add_rms_norm_exact_sums_are_bit_identical(dtype, N, C):
    """Integer-valued x and residual: the sum of squares is exact in any order, so h is bit-identical."""
    g = _gen(C)
    x, res, w = _ints(g, N, C, dtype=dtype), _ints(g, N, C, dtype=dtype), _rand(g, C, dtype=dtype)
    x_sum, h = add_rms_norm(x, res, w, 1e-5)
    r_sum, r_h = ref.add_rms_norm(x, res, w, 1e-5)
    assert torch.equal(x_sum, r_sum) and torch.equal(h, r_h)


# -- silu_mul ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("N", "inter"), [(1, 7), (5, 1100), (2, 2500)])
def test_silu_mul(dtype, N, inter):
    """F.silu(gate) * up, gates up to |30| (both tails of exp): bit-identical on CUDA (both call expf);
    in the interpreter within 1 ulp, 4 in fp32 (torch's vectorised CPU exp is not numpy's)."""
    g = _gen(N * 7 + inter)
    gate_up = _rand(g, N, 2 * inter, dtype=dtype, scale=6.0)
    gate_up[:, :5] = torch.tensor([0.0, -30.0, 30.0, -0.5, 1e-3], dtype=dtype)[: min(5, inter)]
    out = silu_mul(gate_up)
    assert out.shape == (N, inter) and out.dtype == dtype and out.is_contiguous()
    tol = 0 if DEVICE == "cuda" else 4 if dtype == torch.float32 else 1
    assert int(ulp_diff(out, ref.silu_mul(gate_up)).max()) <= tol


# -- qkv_rope ------------------------------------------------------------------------------------
def _qkv_case(seed, N, Hq, H, D, dtype, qk_norm, variant, exact_ints=False, P=37):
    """Arguments of qkv_rope: random qkv (integer-valued if exact_ints), cos/sin tables, positions out
    of order, and a decide tuple mixing threshold rows with base rows."""
    g = _gen(seed)
    W = (Hq + 2 * H) * D
    qkv = _ints(g, N, W, dtype=dtype) if exact_ints else _rand(g, N, W, dtype=dtype, scale=2.0)
    cos, sin = _rand(g, P, D, dtype=dtype), _rand(g, P, D, dtype=dtype)
    pos = torch.randperm(P, generator=g)[:N].to(torch.int32 if N % 2 else torch.int64).to(DEVICE)
    w = _rand(g, Hq + H, D, dtype=dtype) if qk_norm else None
    borrowed = (Hq // H, 1.7, 0.3) if variant == "borrowed" else None
    # a threshold per row, or per row and KV head (a per-(layer, head) table's slice for this layer)
    thr = torch.randn(*((N, H) if Hq == 4 else (N,)), generator=g, dtype=torch.float64).to(DEVICE)
    base = (torch.rand(N, H, generator=g) < 0.5).to(DEVICE)
    uses = (torch.arange(N) % 3 != 1).to(DEVICE)  # rows 1, 4: base rows; the others compare with thr
    uses = uses[:, None] if N % 2 else uses
    logits_in = torch.randn(N, H, generator=g).to(DEVICE) if variant == "adapter" else None
    return (qkv, cos, sin, pos, Hq, H, D, w, 1e-6, borrowed, (thr, base, uses, logits_in))


def _check_layout(out, N, Hq, H, D, dtype, borrowed, decide):
    q, k, logits, dec = out
    assert q.shape == (N, Hq, D) and k.shape == (N, H, D) and q.is_contiguous() and k.is_contiguous()
    assert q.dtype == k.dtype == dtype
    assert (logits is None) == (borrowed is None) and (dec is None) == (decide is None)
    if logits is not None:
        assert logits.shape == (N, H) and logits.dtype == torch.float32
        assert bool((q[:, :: Hq // H, D - 1] == 0).all())  # the borrowed channel, zeroed after RoPE
    if dec is not None:
        assert dec.shape == (N, H) and dec.dtype == torch.int8


SHAPES = [(6, 2, 16), (4, 4, 16)]  # G = 3 and G = 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("Hq", "H", "D"), SHAPES)
@pytest.mark.parametrize("variant", ["plain", "borrowed", "adapter"])
@pytest.mark.parametrize("N", [1, 5])
def test_qkv_rope_without_qk_norm_is_exact(dtype, Hq, H, D, variant, N):
    """No norm: q, k, logits and decisions bit-identical to the eager twin + layer_decisions; qkv untouched."""
    args = _qkv_case(N * 100 + Hq, N, Hq, H, D, dtype, False, variant)
    qkv0 = args[0].clone()
    _assert_bit_identical(args, N, Hq, H, D, dtype)
    assert torch.equal(args[0], qkv0)


def _assert_bit_identical(args, N, Hq, H, D, dtype):
    out = qkv_rope(*args)
    exp = ref.qkv_rope(*args)
    _check_layout(out, N, Hq, H, D, dtype, args[9], args[10])
    for name, a, b in zip(("q", "k", "logits", "decisions"), out, exp, strict=True):
        assert (a is None and b is None) or torch.equal(a, b), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("Hq", "H", "D"), SHAPES + [(4, 2, 128)])
@pytest.mark.parametrize("variant", ["plain", "borrowed"])
@pytest.mark.parametrize("N", [1, 5])
def test_qkv_rope_qk_norm_exact_sums(dtype, Hq, H, D, variant, N):
    """Qwen3 q/k norm on integer-valued qkv (exact sums in any order): everything bit-identical."""
    args = _qkv_case(N * 100 + Hq + 1, N, Hq, H, D, dtype, True, variant, exact_ints=True)
    _assert_bit_identical(args, N, Hq, H, D, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("Hq", "H", "D"), SHAPES + [(4, 2, 128)])
@pytest.mark.parametrize("variant", ["plain", "borrowed"])
@pytest.mark.parametrize("N", [1, 5])
def test_qkv_rope_qk_norm_random(dtype, Hq, H, D, variant, N):
    """Q/k norm on random qkv: q and k within a few roundings of each RoPE term, |x*cos| + |roll(x)*sin|
    (a 1-ulp rstd difference can be many ulps of an output that cancels); logits likewise; decisions
    exactly layer_decisions of the kernel's own logits."""
    args = _qkv_case(N * 100 + Hq + 2, N, Hq, H, D, dtype, True, variant)
    qkv, cos, sin, pos, _, _, _, w, eps, borrowed, decide = args
    q, k, logits, dec = out = qkv_rope(*args)
    rq, rk, rlogits, rdec = ref.qkv_rope(*args)
    _check_layout(out, N, Hq, H, D, dtype, borrowed, decide)
    eps_dt = torch.finfo(dtype).eps
    xn = ref._hf_rms_norm(qkv[:, : (Hq + H) * D].reshape(N, Hq + H, D), w, eps).double()
    c, s = cos[pos.long()].double()[:, None], sin[pos.long()].double()[:, None]
    tol = 8 * eps_dt * (xn.abs() * c.abs() + torch.roll(xn, D // 2, -1).abs() * s.abs())
    got, want = torch.cat([q, k], 1).double(), torch.cat([rq, rk], 1).double()
    assert bool(((got - want).abs() <= tol).all())
    thr, base, uses, _ = decide
    if borrowed is not None:
        G, scale, _ = borrowed
        tol_l = 8 * eps_dt * xn[:, :Hq:G, -1].abs() * scale + 2 * torch.finfo(torch.float32).eps * rlogits.abs()
        assert bool(((logits.double() - rlogits.double()).abs() <= tol_l).all())
        assert torch.equal(dec.bool(), torch.where(uses.reshape(N, 1), logits > thr.reshape(N, -1), base))
    else:
        assert torch.equal(dec, rdec)


def test_qkv_rope_without_decide():
    """decide=None gives no decisions; a borrowed run still returns its logits."""
    args = _qkv_case(7, 3, 6, 2, 16, torch.float32, False, "borrowed")
    q, k, logits, dec = qkv_rope(*args[:10])
    rq, rk, rlogits, _ = ref.qkv_rope(*args[:10])
    assert dec is None and torch.equal(q, rq) and torch.equal(k, rk) and torch.equal(logits, rlogits)
