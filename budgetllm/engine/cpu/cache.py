"""One sequence's compressed KV cache on the CPU: every (layer, KV head) row in one padded tensor.

Layout (the paged engine's row semantics without pages, see docs/cpu.md):

* ``k``, ``v``: ``[L, H, cap, D]``; ``pos`` ``[L, H, cap]`` int64 (logical positions); ``flag``
  ``[L, H, cap]`` bool (evict flags; False = keep or not decided yet). Row (l, h) holds its live
  entries at slots ``0 .. lens[l, h] - 1``, in no particular order; slots past the length are padding.
* ``ring``: ``[L, H, w + 2]`` int64, the slot of token p at ``ring[..., p % (w + 1)]`` for the last
  w + 1 tokens (the extra column takes masked-out scatters). ``last``: ``[L, H]``, the newest token's slot.

Invariant between forwards: a row holds exactly the entries its newest token can see (every
unflagged token, and flagged ones at most ``w`` behind), so a decode step needs only a length mask.

Decode (one token p, :meth:`plan_decode` once per step, then :meth:`store_decode` per layer): the
token leaving the window is p - w - 1 at ring index ``p % (w + 1)``; when it is flagged, token p
takes its slot (no data moves), otherwise it is appended. Whether it is flagged was settled
``w`` steps ago, so every layer's slot is chosen before the layers run, in one batched op.

A chunk of several tokens (prefill, a later turn) goes through :meth:`attend_chunk`: masked attention
over the old row entries and the chunk (the DMS visibility rule), then compaction with index ops
(a stable sort of the kept entries to the front) and a rebuilt ring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RowCache:
    GROW = 256  # slots added beyond what a forward needs when the padded tensors grow
    QUERY_BLOCK = 256  # a long chunk's queries attend in blocks (bounds the mask's memory)

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, window: int,
                 dtype: torch.dtype, device: torch.device):
        L, H = num_layers, num_kv_heads
        self.window, self.W1 = window, window + 1
        self.k = torch.zeros(L, H, 0, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.zeros(L, H, 0, dtype=torch.long, device=device)
        self.flag = torch.zeros(L, H, 0, dtype=torch.bool, device=device)
        self.lens = torch.zeros(L, H, dtype=torch.long, device=device)
        self.ring = torch.zeros(L, H, self.W1 + 1, dtype=torch.long, device=device)
        self.last = torch.zeros(L, H, dtype=torch.long, device=device)
        self.seen = 0
        self._heads = torch.arange(H, device=device)

    # -- bookkeeping --------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reserve(self, slots: int) -> None:
        """Make every row able to hold ``slots`` entries (grows the padded tensors, keeping content)."""
        if slots <= self.capacity:
            return
        extra = slots + self.GROW - self.capacity
        pad = lambda t, fill=0: torch.cat(  # noqa: E731
            [t, torch.full((*t.shape[:2], extra, *t.shape[3:]), fill, dtype=t.dtype, device=t.device)], dim=2)
        self.k, self.v, self.pos, self.flag = pad(self.k), pad(self.v), pad(self.pos), pad(self.flag, False)

    def fork(self) -> RowCache:
        """An independent copy holding only the live part (rows are written in place)."""
        twin = RowCache.__new__(RowCache)
        twin.__dict__.update(self.__dict__)
        n = int(self.lens.max()) if self.lens.numel() else 0
        for name in ("k", "v", "pos", "flag"):
            setattr(twin, name, getattr(self, name)[:, :, :n].clone())
        for name in ("lens", "ring", "last"):
            setattr(twin, name, getattr(self, name).clone())
        return twin

    def live_entries(self) -> int:
        return int(self.lens.sum())

    # -- decode: one token ---------------------------------------------------------------------
    def plan_decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose token ``seen``'s slot in every row. Returns (slots [L, H], additive float32 length
        mask [L, H, 1, M]: 0 on live slots, -inf on padding)."""
        p = self.seen
        ri = p % self.W1
        if p >= self.W1:
            leaving = self.ring[:, :, ri]
            reuse = self.flag.gather(2, leaving[..., None])[..., 0]
            slots = torch.where(reuse, leaving, self.lens)
            self.lens += (~reuse).long()
        else:
            slots = self.lens.clone()
            self.lens += 1
        M = int(self.lens.max())
        self.reserve(M)
        self.ring[:, :, ri] = slots
        self.pos.scatter_(2, slots[..., None], p)
        self.flag.scatter_(2, slots[..., None], False)
        pad = torch.arange(M, device=slots.device) >= self.lens[..., None]
        mask = torch.zeros(pad.shape, dtype=torch.float32, device=slots.device).masked_fill_(pad, float("-inf"))
        return slots, mask[:, :, None, :]

    def store_decode(self, li: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor,
                     M: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [H, D] of token ``seen``. Returns the layer's rows (k, v [H, M, D]) to attend over."""
        self.k[li, self._heads, slots[li]] = k
        self.v[li, self._heads, slots[li]] = v
        return self.k[li, :, :M], self.v[li, :, :M]

    def end_decode(self, slots: torch.Tensor, decisions: torch.Tensor) -> None:
        """decisions [L, H] bool: the step's decisions, the fate of the previous token. Written after
        the layers in one op: that token is inside the window (w >= 1), visible either way this step."""
        if self.seen > 0:
            self.flag.scatter_(2, self.last[..., None], decisions[..., None])
        self.last = slots
        self.seen += 1

    # -- a chunk of tokens ---------------------------------------------------------------------
    def attend_chunk(self, li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decisions: torch.Tensor,
                     pos: torch.Tensor, scale: float) -> torch.Tensor:
        """q [n, Hq, D], k/v [n, H, D], decisions [n, H] bool, pos [n] -> attention output [n, Hq, D].

        Attends under the DMS visibility rule, then keeps what the chunk's last token can still see."""
        n, Hq, D = q.shape
        H = k.shape[1]
        G, w = Hq // H, self.window
        M = int(self.lens[li].max())
        if self.seen > 0:  # the chunk's first token decides the fate of the newest kept token
            self.flag[li, self._heads, self.last[li]] = decisions[0]
        chunk_flag = torch.zeros_like(decisions)
        chunk_flag[:-1] = decisions[1:]
        keys = torch.cat([self.k[li, :, :M], k.transpose(0, 1)], dim=1)  # [H, K, D]
        vals = torch.cat([self.v[li, :, :M], v.transpose(0, 1)], dim=1)
        kpos = torch.cat([self.pos[li, :, :M], pos.expand(H, n)], dim=1)  # [H, K]
        kflag = torch.cat([self.flag[li, :, :M], chunk_flag.T], dim=1)
        valid = torch.cat([torch.arange(M, device=q.device) < self.lens[li, :, None],
                           torch.ones(H, n, dtype=torch.bool, device=q.device)], dim=1)
        kf, vf = keys.float()[:, None], vals.float()[:, None]  # [H, 1, K, D]: shared by the G query heads
        out = torch.empty(n, Hq, D, dtype=q.dtype, device=q.device)
        for a in range(0, n, self.QUERY_BLOCK):
            b = min(n, a + self.QUERY_BLOCK)
            dist = pos[None, a:b, None] - kpos[:, None, :]  # [H, b - a, K]
            visible = valid[:, None] & (dist >= 0) & ((dist <= w) | ~kflag[:, None])
            qh = q[a:b].float().view(b - a, H, G, D).permute(1, 2, 0, 3)  # [H, G, b - a, D]
            o = F.scaled_dot_product_attention(qh, kf.expand(H, G, -1, D), vf.expand(H, G, -1, D),
                                               attn_mask=visible[:, None], scale=scale)
            out[a:b] = o.permute(2, 0, 1, 3).reshape(b - a, Hq, D).to(q.dtype)
        self._compact(li, keys, vals, kpos, kflag, valid & (~kflag | (pos[-1] - kpos <= w)), int(pos[-1]))
        return out

    def _compact(self, li, keys, vals, kpos, kflag, keep, newest: int) -> None:
        H, D = keys.shape[0], keys.shape[2]
        lens = keep.sum(1)
        n = int(lens.max())
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n]  # kept entries first, in order
        self.reserve(n)
        self.k[li, :, :n] = keys.gather(1, order[..., None].expand(H, n, D))
        self.v[li, :, :n] = vals.gather(1, order[..., None].expand(H, n, D))
        p = kpos.gather(1, order)
        self.pos[li, :, :n] = p
        self.flag[li, :, :n] = kflag.gather(1, order)
        self.lens[li] = lens
        self.last[li] = lens - 1  # the chunk's last token is always kept, and sorts last
        slot = torch.arange(n, device=keys.device).expand(H, n)
        in_ring = (slot < lens[:, None]) & (newest - p < self.W1)
        self.ring[li].scatter_(1, torch.where(in_ring, p % self.W1, self.W1), slot)

    def end_chunk(self, n: int) -> None:
        self.seen += n
