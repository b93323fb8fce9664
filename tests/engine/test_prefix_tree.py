"""The prefix tree against a naive model (a list of kept states), as a hypothesis state machine.

Random conversations (prompts that extend, branch from or edit earlier ones, under two rules),
lookups, LRU releases and byte pressure: the tree finds exactly the longest kept state that is a
prefix of the query (at most ``len - 1`` tokens), keeps at most its byte and entry bounds, releases
least recently used states first and every state exactly once (none leaked, none released twice).
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from budgetllm.engine.prefix_tree import PrefixTree

KEYS = ["dms>0", "window"]


class TreeMachine(RuleBasedStateMachine):
    @initialize(cap=st.integers(1, 200), entries=st.one_of(st.none(), st.integers(1, 6)))
    def setup(self, cap, entries):
        self.tree = PrefixTree(cap, max_entries=entries)
        self.model: list[list] = []  # [tokens, key, state, nbytes], least recently used first
        self.released: list[int] = []
        self.live: set[int] = set()
        self.n = 0
        self.seen: list[tuple] = [(1, 2, 3)]

    def _release(self, entries) -> None:
        for e in entries:
            assert e.state in self.live, "a state released twice (or never kept)"
            self.live.discard(e.state)
            self.released.append(e.state)
            self.model = [m for m in self.model if m[2] != e.state]

    def _tokens(self, base: int, cut: int, tail: list[int]) -> tuple:
        old = self.seen[base % len(self.seen)]
        return old[:len(old) - cut % (len(old) + 1)] + tuple(tail)

    @rule(base=st.integers(0, 50), cut=st.integers(0, 5), tail=st.lists(st.integers(0, 3), max_size=4),
          key=st.sampled_from(KEYS), nbytes=st.integers(1, 60))
    def keep(self, base, cut, tail, key, nbytes):
        tokens = self._tokens(base, cut, tail)
        if not tokens:
            return
        self.seen.append(tokens)
        self.n += 1
        state = self.n
        self.live.add(state)
        dup = any(m[0] == tokens and m[1] == key for m in self.model)
        ok, out = self.tree.insert(list(tokens), key, state, nbytes)
        if dup:
            assert not ok and not out
            for i, m in enumerate(self.model):  # the equal state is refreshed instead
                if m[0] == tokens and m[1] == key:
                    self.model.append(self.model.pop(i))
                    break
        if not ok:
            self.live.discard(state)  # the caller releases it
        else:
            self.model.append([tokens, key, state, nbytes])
        # LRU: the pushed-out states are the least recently used ones, oldest first
        expect = [m[2] for m in self.model[:len(out)]]
        assert [e.state for e in out] == expect
        self._release(out)

    @rule(base=st.integers(0, 50), cut=st.integers(0, 5), tail=st.lists(st.integers(0, 3), max_size=4),
          key=st.sampled_from(KEYS))
    def lookup(self, base, cut, tail, key):
        tokens = self._tokens(base, cut, tail)
        got = self.tree.match(list(tokens), key)
        cands = [m for m in self.model if m[1] == key and len(m[0]) < len(tokens) and tokens[:len(m[0])] == m[0]]
        best = max(cands, key=lambda m: len(m[0]), default=None)
        assert (got.state if got else None) == (best[2] if best else None)
        if best is not None:
            self.model.remove(best)
            self.model.append(best)  # a hit is a use

    @rule()
    def release_oldest(self):
        e = self.tree.pop_lru()
        assert (e is None) == (not self.model)
        if e is not None:
            assert e.state == self.model[0][2]
            self._release([e])

    @invariant()
    def bounded_and_consistent(self):
        t = self.tree
        assert len(t) == len(self.model) and t.nbytes == sum(m[3] for m in self.model) <= t.capacity_bytes
        assert t.max_entries is None or len(t) <= t.max_entries
        assert {e.state for e in t.entries()} == {m[2] for m in self.model} == self.live

    def teardown(self):
        while (e := self.tree.pop_lru()) is not None:
            self._release([e])
        assert not self.live and len(set(self.released)) == len(self.released)
        assert not self.tree.root.children, "dead nodes left in the tree"


TreeMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestTreeMachine = TreeMachine.TestCase


def test_long_histories_split_where_they_part():
    """Agent-sized histories (6K tokens) that part at any point: the edge splits exactly there (the
    split is found by slice comparisons, not token by token), and each lookup finds its own state."""
    import random

    rng = random.Random(3)
    base = [rng.randrange(50) for _ in range(6000)]
    for cut in (1, 2, 777, 3000, 5999):
        t = PrefixTree(10 ** 9)
        other = base[:cut] + [99] + base[cut + 1:]
        assert t.insert(base, "k", "a", 1)[0] and t.insert(other, "k", "b", 1)[0]
        assert t.insert(base[:cut], "k", "p", 1)[0]
        (mid,) = t.root.children.values()
        assert len(mid.edge) == cut and len(mid.children) == 2 and "k" in mid.entries
        assert t.match(base + [1], "k").state == "a" and t.match(other + [1], "k").state == "b"
        assert t.match(base[:cut] + [98, 1], "k").state == "p"
        assert t.match(base[:cut], "k") is None  # at least one token is left to feed
