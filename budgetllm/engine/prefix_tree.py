"""A radix tree of token sequences over kept cache states, bounded in bytes, LRU. Torch-free.

Agents resend the whole conversation every turn. Both backends keep the compressed cache *state*
reached after a request's prompt and after its end; a later prompt that starts with the tokens of
a kept state (under the same eviction rule) continues from it and prefills only the rest.

A compressed row cannot be rolled back (evicted tokens are gone), so a state is reusable only by a
prompt that contains ALL of its tokens: reuse points are the states that were kept, never
truncations. That is why a request keeps its prompt-end state as well as its end state: when the
next turn re-renders the answer differently (thinking stripped, tool-call markup, whitespace, an
answer cut at max_tokens), the prompt-end state still matches and only the last answer and the new
message are prefilled. An edited earlier turn simply matches a shorter state (or none).

The tree does not own memory: ``insert`` and ``pop_lru`` hand back the states pushed out, and the
backend releases them (the paged engine gives their pages back, the reference drops tensors).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Entry:
    """One kept state: ``length`` tokens (the path to ``node``) under eviction rule ``key``."""

    key: Hashable
    length: int
    state: Any  # the backend's object (a parked Sequence, a ReferenceSequence)
    nbytes: int
    node: _Node | None = None


@dataclass(eq=False)
class _Node:
    edge: tuple  # tokens from the parent to this node
    parent: _Node | None = None
    children: dict = field(default_factory=dict)  # first token of the child's edge -> child
    entries: dict = field(default_factory=dict)  # key -> Entry


class PrefixTree:
    """Kept states by token prefix. ``capacity_bytes`` bounds the sum of the entries' ``nbytes``."""

    def __init__(self, capacity_bytes: int = 0, max_entries: int | None = None):
        self.capacity_bytes = int(capacity_bytes)
        self.max_entries = max_entries
        self.root = _Node(())
        self._lru: OrderedDict[int, Entry] = OrderedDict()  # id(entry) -> entry, least recent first
        self.nbytes = 0
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._lru)

    def entries(self) -> list[Entry]:
        return list(self._lru.values())

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0 and (self.max_entries is None or self.max_entries > 0)

    # -- lookup -----------------------------------------------------------------------------
    def match(self, tokens: Sequence[int], key: Hashable, limit: int | None = None) -> Entry | None:
        """The longest kept state under ``key`` whose tokens are a prefix of ``tokens`` and that is at
        most ``limit`` long (default ``len(tokens) - 1``: at least one token is left to feed).
        Marks it recently used; it stays in the tree."""
        limit = len(tokens) - 1 if limit is None else limit
        node, i, best = self.root, 0, None
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            n = len(child.edge)
            if i + n > limit or tuple(tokens[i:i + n]) != child.edge:
                break
            i += n
            node = child
            e = node.entries.get(key)
            if e is not None:
                best = e
        if best is not None:
            self._lru.move_to_end(id(best))
        return best

    def has(self, tokens: Sequence[int], key: Hashable) -> bool:
        """Whether a state of exactly ``tokens`` under ``key`` is kept."""
        e = self.match(tokens, key, limit=len(tokens))
        return e is not None and e.length == len(tokens)

    def count_hit(self, entry: Entry) -> None:
        self.hits += 1
        self.reused_tokens += entry.length

    # -- insert / remove --------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], key: Hashable, state: Any, nbytes: int) -> tuple[bool, list[Entry]]:
        """Keep ``state`` for ``tokens``. Returns (kept, entries pushed out by LRU). Not kept (the
        caller releases ``state``): the tree is off, the state alone exceeds the capacity, or an
        equal state (same tokens and key) is already kept (that one is refreshed instead)."""
        if not self.enabled or not tokens:
            return False, []
        node = self._node_for(tuple(tokens))
        if key in node.entries:
            self._lru.move_to_end(id(node.entries[key]))
            return False, []
        if nbytes > self.capacity_bytes:
            self._prune(node)
            return False, []
        e = Entry(key, len(tokens), state, int(nbytes), node)
        node.entries[key] = e
        self._lru[id(e)] = e
        self.nbytes += e.nbytes
        out = []
        while self.nbytes > self.capacity_bytes or (self.max_entries is not None and len(self) > self.max_entries):
            out.append(self.pop_lru())
        return e not in out, [o for o in out if o is not e]

    def pop_lru(self) -> Entry | None:
        """Remove and return the least recently used entry (None when empty)."""
        if not self._lru:
            return None
        e = next(iter(self._lru.values()))
        self.remove(e)
        return e

    def remove(self, e: Entry) -> None:
        if self._lru.pop(id(e), None) is None:
            return
        self.nbytes -= e.nbytes
        node = e.node
        del node.entries[e.key]
        e.node = None
        self._prune(node)

    def _prune(self, node: _Node) -> None:
        while node is not self.root and not node.entries and not node.children:  # dead leaves
            parent = node.parent
            del parent.children[node.edge[0]]
            node = parent

    def resize(self, e: Entry, nbytes: int) -> list[Entry]:
        """The state's size changed (the engine read its true size back): re-bound the tree."""
        self.nbytes += int(nbytes) - e.nbytes
        e.nbytes = int(nbytes)
        out = []
        while self.nbytes > self.capacity_bytes and self._lru:
            out.append(self.pop_lru())
        return out

    def _node_for(self, tokens: tuple) -> _Node:
        """The node at exactly ``tokens`` (created, splitting an edge where needed)."""
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                new = _Node(tokens[i:], node)
                node.children[tokens[i]] = new
                return new
            edge = child.edge
            j = common_prefix(tokens[i:i + len(edge)], edge, known=1)  # the first token matches
            if j < len(edge):  # split the edge at j
                mid = _Node(edge[:j], node)
                node.children[tokens[i]] = mid
                child.edge = edge[j:]
                child.parent = mid
                mid.children[child.edge[0]] = child
                child = mid
            node = child
            i += j
        return node


def common_prefix(a, b, known: int = 0) -> int:
    """Length of the common prefix of two token sequences of one type, of which the first ``known``
    match, by slice comparisons (C speed: no Python step per token, also on 32K-token histories)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = known, n - 1  # a[:lo] matches, a[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid - 1)
    return lo
