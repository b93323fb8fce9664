"""Reuse of a finished request's compressed cache by the next turn of the same conversation. Torch-free.

Agents resend the whole conversation every turn. With ``prefix_cache > 0`` a finished sequence is
*parked*: it keeps its slot and pages (its rows, ring and ``seq_pos`` stay on the GPU). A new
request whose prompt starts with every token a parked sequence has cached, under the same eviction
rule, adopts that slot and only prefills the rest: a chunked prefill on top of the compressed rows
(docs/engine-layout.md: the first new token decides the fate of the last cached one). The result
equals prefilling the whole prompt, because DMS decisions depend only on the tokens before.

A compressed row cannot be rolled back (evicted tokens are gone), so only a full match of the
parked tokens counts. Parked sequences are evicted least recently parked first, whenever a new
request needs their slot or pages, and before any running sequence is preempted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from budgetllm.engine.request import Sequence


@dataclass
class PrefixCache:
    capacity: int = 0  # parked sequences kept at most (0 = off)
    parked: OrderedDict = field(default_factory=OrderedDict)  # seq_id -> Sequence, oldest first
    hits: int = 0
    reused_tokens: int = 0

    def __len__(self) -> int:
        return len(self.parked)

    def park(self, seq: Sequence) -> list[Sequence]:
        """Keep ``seq``'s cache; returns the sequences pushed out (their slots must be released)."""
        if self.capacity <= 0 or seq.slot is None or seq.num_cached == 0:
            return [seq]
        self.parked[seq.seq_id] = seq
        out = []
        while len(self.parked) > self.capacity:
            out.append(self.parked.popitem(last=False)[1])
        return out

    def take(self, seq: Sequence) -> Sequence | None:
        """The parked sequence with the longest cached prefix of ``seq``'s tokens (removed), if any."""
        best = None
        for p in self.parked.values():
            n = p.num_cached
            if (p.cache_key == seq.cache_key and n < len(seq.token_ids) and (best is None or n > best.num_cached)
                    and seq.token_ids[:n] == p.token_ids[:n]):
                best = p
        if best is not None:
            del self.parked[best.seq_id]
            self.hits += 1
            self.reused_tokens += best.num_cached
        return best

    def pop_oldest(self) -> Sequence | None:
        return self.parked.popitem(last=False)[1] if self.parked else None
