"""Copy-on-write forks and releases of sequence slots (budgetllm/cache/sharing.py) against a naive
model on random pools: the twin copies exactly the pages a later step may write (the window's pages
and the partly filled last page) into pages that were free, shares the rest, counts every holder,
and a release frees a page only when its last holder lets go: no page leaked, none freed twice.
Both ops run without a host sync (the sync-free paths are what this checks)."""

from __future__ import annotations

import random

import pytest
import torch

from budgetllm.cache.sharing import fork_slot, new_refs, release_slots, writable_pages
from budgetllm.kernels import PagedKV

L, H, PAGE, W, MAXP, S = 2, 2, 4, 5, 6, 5


def _fill(kv: PagedKV, rng: random.Random, slot: int, seq_len: int) -> None:
    """Give ``slot`` rows of random lengths (pages popped off the free stack) and a random ring."""
    top = int(kv.alloc_state[0])
    for li in range(L):
        for h in range(H):
            n = rng.randint(1, min(seq_len, MAXP * PAGE))
            k = -(-n // PAGE)
            kv.block_tables[li, slot, h, :k] = kv.free_stack[top:top + k]
            top += k
            kv.row_lens[li, slot, h] = n
            kv.ring[li, slot, h] = torch.tensor([rng.randrange(n) for _ in range(W + 1)])
    kv.alloc_state[0] = top
    kv.seq_pos[slot] = seq_len


def _writable(kv: PagedKV, slot: int, seq_len: int) -> set:
    """(layer, head, page index) a later step may write: the naive twin of writable_pages."""
    out = set()
    for li in range(L):
        for h in range(H):
            n = int(kv.row_lens[li, slot, h])
            idx = {int(r) // PAGE for r in kv.ring[li, slot, h, :min(W + 1, seq_len)]}
            if n % PAGE:
                idx.add(n // PAGE)
            out |= {(li, h, p) for p in idx if p < MAXP and kv.block_tables[li, slot, h, p] >= 0}
    return out


def _check(kv: PagedKV, refs: torch.Tensor, slots: set) -> None:
    held: dict[int, int] = {}
    for s in slots:
        for p in kv.block_tables[:, s].flatten().tolist():
            if p >= 0:
                held[p] = held.get(p, 0) + 1
    top = int(kv.alloc_state[0])
    assert top == len(held), "pages in use != pages held"
    free = kv.free_stack[top:].tolist()
    assert len(set(free)) == len(free) and not set(free) & set(held), "a page freed twice or while held"
    assert set(free) | set(held) == set(range(kv.num_pages)), "a page leaked"
    for p in range(kv.num_pages):
        assert int(refs[p]) == held.get(p, 1) - 1, f"page {p}: refs {int(refs[p])}, holders {held.get(p, 0)}"


@pytest.mark.parametrize("seed", range(6))
def test_forks_and_releases_match_the_naive_model(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    kv = PagedKV.allocate(num_pages=200, page_size=PAGE, head_dim=3, num_layers=L, max_slots=S, num_kv_heads=H,
                          max_pages_per_row=MAXP, window=W, dtype=torch.float32, device="cpu")
    kv.k_pool.normal_()
    kv.v_pool.normal_()
    kv.slot_pos.random_(0, 100)
    kv.slot_flag.random_(0, 2)
    refs = new_refs(kv)
    live = {0: rng.randint(3, 30)}
    _fill(kv, rng, 0, live[0])
    for _ in range(25):
        free_slots = [s for s in range(S) if s not in live]
        if free_slots and (rng.random() < 0.6 or len(live) == 1):
            src, dst = rng.choice(sorted(live)), rng.choice(free_slots)
            wr = _writable(kv, src, live[src])
            assert {tuple(i) for i in writable_pages(kv, src, live[src]).nonzero().tolist()} == wr
            before = set(kv.free_stack[int(kv.alloc_state[0]):].tolist())
            n = fork_slot(kv, refs, src, dst, live[src])
            assert int(n) == len(wr) and int(kv.slot_oom[dst]) == 0
            new = []
            for li in range(L):
                for h in range(H):
                    a, b = kv.block_tables[li, src, h], kv.block_tables[li, dst, h]
                    for p in range(MAXP):
                        if (li, h, p) in wr:
                            new.append(int(b[p]))
                            for pool in (kv.k_pool, kv.v_pool, kv.slot_pos, kv.slot_flag):
                                assert torch.equal(pool[int(b[p])], pool[int(a[p])])
                        else:
                            assert int(b[p]) == int(a[p])
            assert len(set(new)) == len(new) and set(new) <= before  # fresh pages, each once
            assert torch.equal(kv.row_lens[:, dst], kv.row_lens[:, src]) and kv.seq_pos[dst] == kv.seq_pos[src]
            live[dst] = live[src]
        else:
            gone = rng.sample(sorted(live), rng.randint(1, len(live) - 1))
            release_slots(kv, refs, gone)
            for s in gone:
                del live[s]
                assert (kv.block_tables[:, s] == -1).all() and int(kv.seq_pos[s]) == 0
        _check(kv, refs, set(live))
    release_slots(kv, refs, sorted(live))
    _check(kv, refs, set())
    assert int(kv.alloc_state[0]) == 0


def test_a_fork_the_pool_cannot_take_leaves_an_empty_flagged_slot():
    """The host accounting keeps forks within the free pages; if one were not, the twin stays empty
    and flagged (its request is preempted and recomputed), and nothing is taken or shared."""
    kv = PagedKV.allocate(num_pages=2 * L * H * MAXP, page_size=PAGE, head_dim=3, num_layers=L, max_slots=S,
                          num_kv_heads=H, max_pages_per_row=MAXP, window=W, dtype=torch.float32, device="cpu")
    refs = new_refs(kv)
    _fill(kv, random.Random(0), 0, 30)
    top = int(kv.alloc_state[0])
    n = len(_writable(kv, 0, 30))
    kv.alloc_state[0] = kv.num_pages - n + 1  # one page short
    assert int(fork_slot(kv, refs, 0, 1, 30)) == 0
    assert int(kv.alloc_state[0]) == kv.num_pages - n + 1 and int(kv.slot_oom[1]) == 1
    assert (kv.block_tables[:, 1] == -1).all() and int(kv.seq_pos[1]) == 0 and int(refs.sum()) == 0
    kv.alloc_state[0] = top
    release_slots(kv, refs, [0, 1])
    _check(kv, refs, set())
