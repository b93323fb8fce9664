"""store_prefill_kv / store_decode_kv against the naive reference, plus the allocator invariants."""

import pytest
import torch
from kvtestlib import DEVICE, assert_allocator_consistent, assert_same_rows, clone, make_kv, random_tokens

from budgetllm.kernels import num_free_pages, release_rows, store_decode_kv, store_prefill_kv
from budgetllm.kernels import reference as ref


def _prefill_both(kv_tri, kv_ref, lens, slots, layer, seed, H, D, dtype, p_evict=0.6):
    """Store one chunk per slot (lengths `lens`) with the kernel and the reference; advance seq_pos."""
    N = sum(lens)
    _, k, v, dec = random_tokens(N, H, D, dtype, seed, p_evict)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=DEVICE)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    store_prefill_kv(kv_tri, k, v, dec, layer, sl, cu)
    ref.store_prefill_kv(kv_ref, k, v, dec, layer, sl, cu)


def _advance(kvs, slots, lens):
    for kv in kvs:
        for s, n in zip(slots, lens, strict=True):
            kv.seq_pos[s] += n


@pytest.mark.parametrize(("window", "PAGE", "chunks", "p_evict", "seed"), [
    (5, 4, [[13, 0, 29], [7, 11, 3]], 0.6, 1),
    (6, 4, [[40, 1, 17]], 0.9, 2),
    (7, 3, [[1, 9, 2], [20, 3, 0], [5, 18, 1]], 0.5, 3),
    (0, 4, [[9, 5, 12], [6, 7, 2]], 0.5, 4),
    (5, 4, [[31, 2, 8], [3, 3, 33]], 0.0, 5),
    (6, 5, [[25, 14, 6], [9, 0, 30]], 1.0, 6),
])
def test_store_prefill_matches_reference(window, PAGE, chunks, p_evict, seed):
    H, D, slots = 2, 16, [3, 0, 1]
    kv_ref = make_kv(PAGE=PAGE, window=window, H=H, D=D, seed=seed)
    kv_tri = clone(kv_ref)
    for i, lens in enumerate(chunks):
        for layer in range(2):
            _prefill_both(kv_tri, kv_ref, lens, slots, layer, seed * 100 + i * 10 + layer, H, D, torch.float32, p_evict)
        _advance((kv_tri, kv_ref), slots, lens)
        assert_same_rows(kv_tri, kv_ref)
    assert int(kv_tri.alloc_state[0]) == int(kv_ref.alloc_state[0])
    assert int(kv_tri.alloc_state[1]) == 0
    assert_allocator_consistent(kv_tri)


@pytest.mark.parametrize(("window", "seed"), [(5, 11), (7, 12)])
def test_prefill_chunks_equal_decode_steps(window, seed):
    """Storing a sequence in chunks (kernel) == storing it token by token (decode kernel)."""
    H, D, T, slots = 2, 16, 37, [2, 4]
    a = make_kv(window=window, H=H, D=D, seed=seed)
    b = clone(a)
    _, k, v, dec = random_tokens(T * 2, H, D, torch.float32, seed)
    k, v, dec = k.view(2, T, H, D), v.view(2, T, H, D), dec.view(2, T, H)
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    for lo, hi in [(0, 11), (11, 12), (12, 37)]:
        n = hi - lo
        cu = torch.tensor([0, n, 2 * n], dtype=torch.int32, device=DEVICE)
        store_prefill_kv(a, k[:, lo:hi].reshape(-1, H, D), v[:, lo:hi].reshape(-1, H, D),
                         dec[:, lo:hi].reshape(-1, H), 1, sl, cu)
        _advance([a], slots, [n, n])
    for t in range(T):
        store_decode_kv(b, k[:, t], v[:, t], dec[:, t], 1, sl)
        _advance([b], slots, [1, 1])
    assert_same_rows(a, b, layers=[1], slots=slots)


def test_decode_store_multi_step_and_release():
    """~30 decode steps on rows of different lengths (incl. empty), then release every slot."""
    H, D, L, window, seed = 2, 16, 2, 6, 21
    slots = [4, 1, 2]
    kv_ref = make_kv(H=H, D=D, L=L, window=window, seed=seed)
    kv_tri = clone(kv_ref)
    for layer in range(L):
        _prefill_both(kv_tri, kv_ref, [0, 9, 3], slots, layer, seed + layer, H, D, torch.float32)
    _advance((kv_tri, kv_ref), slots, [0, 9, 3])
    sl = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
    for step in range(30):
        for layer in range(L):
            _, k, v, dec = random_tokens(3, H, D, torch.float32, 1000 + step * 7 + layer, 0.6)
            store_decode_kv(kv_tri, k, v, dec, layer, sl)
            ref.store_decode_kv(kv_ref, k, v, dec, layer, sl)
        _advance((kv_tri, kv_ref), slots, [1, 1, 1])
        assert_same_rows(kv_tri, kv_ref, slots=slots)
    assert_allocator_consistent(kv_tri)
    P = kv_tri.num_pages
    assert int(num_free_pages(kv_tri)) == P - int(kv_tri.alloc_state[0]) < P
    release_rows(kv_tri, torch.tensor([1], dtype=torch.int32, device=DEVICE))
    assert_allocator_consistent(kv_tri)
    assert int(kv_tri.row_lens[:, 1].abs().sum()) == 0 and int(kv_tri.seq_pos[1]) == 0
    release_rows(kv_tri, torch.tensor([2, 4], dtype=torch.int32, device=DEVICE))
    assert_allocator_consistent(kv_tri)
    assert int(num_free_pages(kv_tri)) == P
    assert sorted(kv_tri.free_stack.tolist()) == list(range(P))
    assert bool((kv_tri.block_tables == -1).all())


def test_overflow_sets_flag_and_never_writes_out_of_bounds():
    """A pool of 7 pages: allocations past it fail, are counted, and leave the allocator consistent."""
    H, D, window, PAGE = 2, 16, 5, 4
    kv = make_kv(P=7, PAGE=PAGE, H=H, D=D, window=window, L=1, MAXP=6, seed=31)
    sl = torch.tensor([0, 3], dtype=torch.int32, device=DEVICE)
    _, k, v, dec = random_tokens(30, H, D, torch.float32, 32, p_evict=0.0)
    cu = torch.tensor([0, 10, 30], dtype=torch.int32, device=DEVICE)
    store_prefill_kv(kv, k, v, dec, 0, sl, cu)
    assert int(kv.alloc_state[1]) > 0
    assert int(kv.alloc_state[0]) <= 7  # a wave pops all its pages or none
    assert_allocator_consistent(kv)
    assert bool(((kv.row_lens >= 0) & (kv.row_lens <= 6 * PAGE)).all())
    assert int(kv.slot_oom[0]) + int(kv.slot_oom[3]) >= 1
    # decode steps with a (nearly) empty pool: rows at a page boundary get the last pages or fail
    kv.seq_pos[0], kv.seq_pos[3] = 10, 20
    for step in range(6):
        before, free = kv.row_lens.clone(), int(num_free_pages(kv))
        fails = int(kv.alloc_state[1])
        _, k1, v1, d1 = random_tokens(2, H, D, torch.float32, 33 + step, p_evict=0.0)
        store_decode_kv(kv, k1, v1, d1, 0, sl)
        grew = (kv.row_lens - before)[0, [0, 3]].flatten()
        at_boundary = int((before[0, [0, 3]] % PAGE == 0).sum())
        assert int(grew.sum()) == 4 - at_boundary + min(free, at_boundary)
        assert int(kv.alloc_state[1]) - fails == at_boundary - min(free, at_boundary)
        assert int(num_free_pages(kv)) == free - min(free, at_boundary)
        assert_allocator_consistent(kv)
        kv.seq_pos[0] += 1
        kv.seq_pos[3] += 1
    assert int(num_free_pages(kv)) == 0
    release_rows(kv, sl)
    assert int(num_free_pages(kv)) == 7 and int(kv.slot_oom.sum()) == 0
    assert_allocator_consistent(kv)


def test_max_pages_per_row_is_an_overflow():
    """A row that would need more than MAXP pages fails like an empty pool (no write past the table)."""
    kv = make_kv(P=50, PAGE=4, L=1, MAXP=2, window=3, seed=41)
    sl = torch.tensor([1], dtype=torch.int32, device=DEVICE)
    _, k, v, dec = random_tokens(12, 2, 16, torch.float32, 42, p_evict=0.0)
    store_prefill_kv(kv, k, v, dec, 0, sl)
    assert int(kv.alloc_state[1]) > 0 and int(kv.slot_oom[1]) == 1
    assert int(kv.row_lens.max()) <= 8
    assert_allocator_consistent(kv)


def test_strided_views_and_int8_decisions():
    """k/v as views of a packed qkv tensor (row stride 3*H*D) and int8 decisions work like contiguous ones."""
    H, D, N = 2, 16, 23
    a = make_kv(H=H, D=D, window=5, seed=51)
    b = clone(a)
    _, k, v, dec = random_tokens(N, H, D, torch.float32, 52)
    kv_packed = torch.stack([torch.zeros_like(k), k, v], 1)  # [N, 3, H, D]
    sl = torch.tensor([2], dtype=torch.int32, device=DEVICE)
    store_prefill_kv(a, kv_packed[:, 1], kv_packed[:, 2], dec.to(torch.int8), 0, sl)
    store_prefill_kv(b, k, v, dec, 0, sl)
    for x in (a, b):
        x.seq_pos[2] = N
    assert_same_rows(a, b, slots=[2])
    store_decode_kv(a, kv_packed[:3, 1], kv_packed[:3, 2], dec[:3].to(torch.int8), 1, torch.arange(3, dtype=torch.int32, device=DEVICE))
    store_decode_kv(b, k[:3], v[:3], dec[:3], 1, torch.arange(3, dtype=torch.int32, device=DEVICE))
    assert_same_rows(a, b)
