"""Shared helpers of the kernel tests (small odd sizes, poisoned pools, row comparison)."""

from __future__ import annotations

import copy

import torch

from budgetllm.kernels import PagedKV
from budgetllm.kernels import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative norm error of a against the reference b (NaN-safe: NaN gives inf)."""
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make_kv(*, P=200, PAGE=4, D=16, L=2, S=5, H=2, MAXP=16, window=5, dtype=torch.float32, seed=0) -> PagedKV:
    """An empty cache whose non-live memory is poisoned and whose free stack is shuffled."""
    g = torch.Generator().manual_seed(seed)
    kv = PagedKV.allocate(num_pages=P, page_size=PAGE, head_dim=D, num_layers=L, max_slots=S, num_kv_heads=H,
                          max_pages_per_row=MAXP, window=window, dtype=dtype, device=DEVICE)
    kv.k_pool.fill_(float("nan"))
    kv.v_pool.fill_(float("nan"))
    kv.slot_pos.fill_(-999)
    kv.slot_flag.copy_(torch.randint(0, 3, kv.slot_flag.shape, generator=g).to(torch.int8))
    kv.ring.fill_(10**6)
    kv.free_stack.copy_(torch.randperm(P, generator=g).to(torch.int32))
    return kv


def random_tokens(n: int, H: int, D: int, dtype, seed: int, p_evict: float = 0.6, Hq: int | None = None):
    """(q [n, Hq, D] or None, k [n, H, D], v, decisions [n, H] bool) on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, H, D, generator=g).to(dtype)
    v = torch.randn(n, H, D, generator=g).to(dtype)
    dec = torch.rand(n, H, generator=g) < p_evict
    q = torch.randn(n, Hq, D, generator=g).to(dtype) if Hq else None
    return (q.to(DEVICE) if q is not None else None), k.to(DEVICE), v.to(DEVICE), dec.to(DEVICE)


def flags_of(decisions: torch.Tensor) -> torch.Tensor:
    """Whole-sequence decisions [T, H] -> flags [T, H] (flag of k = decision of k+1)."""
    f = torch.zeros_like(decisions, dtype=torch.bool)
    f[:-1] = decisions[1:].bool()
    return f


def assert_same_rows(a: PagedKV, b: PagedKV, layers=None, slots=None) -> None:
    """Same row lengths, row contents (pos, flag, K, V in row order) and ring for the given rows."""
    L, S, H, _ = a.block_tables.shape
    W1 = a.window + 1
    assert torch.equal(a.row_lens, b.row_lens), (a.row_lens, b.row_lens)
    for layer in layers if layers is not None else range(L):
        for s in slots if slots is not None else range(S):
            p = int(a.seq_pos[s])
            for h in range(H):
                ra, rb = ref.read_row(a, layer, s, h), ref.read_row(b, layer, s, h)
                for name, x, y in zip(("pos", "flag", "k", "v"), ra, rb, strict=True):
                    assert torch.equal(x, y), f"row {(layer, s, h)} {name}: {x} vs {y}"
                last = torch.arange(max(0, p - W1), p) % W1
                assert torch.equal(a.ring[layer, s, h, last.to(a.ring.device)], b.ring[layer, s, h, last.to(b.ring.device)])


def assert_allocator_consistent(kv: PagedKV) -> None:
    """Every page is either free (free_stack[top:]) or in exactly one block table, never both or twice."""
    top = int(kv.alloc_state[0])
    P = kv.num_pages
    assert 0 <= top <= P
    free = kv.free_stack[top:].tolist()
    used = [p for p in kv.block_tables.flatten().tolist() if p >= 0]
    assert len(used) == top, (len(used), top)
    assert sorted(free + used) == list(range(P))


def clone(kv: PagedKV) -> PagedKV:
    return copy.deepcopy(kv)
