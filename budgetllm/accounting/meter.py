"""Per-call KV memory meter: turns row lengths reported by a backend into bytes."""

from __future__ import annotations

from dataclasses import dataclass

from budgetllm.types import KVMemory


@dataclass(frozen=True)
class KVShape:
    """What one token costs in a dense cache."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @property
    def entry_bytes(self) -> int:
        """Bytes of one (layer, KV head) entry: its K and its V."""
        return 2 * self.head_dim * self.dtype_bytes

    @property
    def rows_per_token(self) -> int:
        return self.num_layers * self.num_kv_heads

    @property
    def token_bytes(self) -> int:
        """Bytes one token takes in a dense cache, all layers and heads."""
        return self.entry_bytes * self.rows_per_token


class KVMeter:
    """Accumulates one call's KV memory from what the backend observes.

    ``seq_len`` is the number of tokens the sequence has seen; ``live_entries`` is the
    number of (layer, KV head, token) entries kept, summed over all rows.
    """

    def __init__(self, shape: KVShape, compression_requested: float, mode: str, window: int = 0):
        self.shape = shape
        self._kv = KVMemory(compression_requested=float(compression_requested), mode=mode, window=int(window))
        self._seq_len = 0
        self._live_entries = 0

    def observe(self, seq_len: int, live_entries: int, reserved_bytes: int | None = None) -> None:
        """Record the state after a prefill or a decode step."""
        if live_entries > seq_len * self.shape.rows_per_token:
            raise ValueError(f"live entries {live_entries} exceed a dense cache of {seq_len} tokens")
        self._seq_len = seq_len
        self._live_entries = live_entries
        live = live_entries * self.shape.entry_bytes
        self._kv.live_bytes = live
        self._kv.peak_live_bytes = max(self._kv.peak_live_bytes, live)
        self._kv.logical_bytes = seq_len * self.shape.token_bytes
        self._kv.evicted_tokens = seq_len * self.shape.rows_per_token - live_entries
        self._kv.reserved_bytes = live if reserved_bytes is None else int(reserved_bytes)

    def read(self, entries: int) -> None:
        """Record that one decode step's attention read ``entries`` (layer, head, token) entries."""
        self._kv.kv_bytes_read += entries * self.shape.entry_bytes

    def result(self) -> KVMemory:
        kv = KVMemory(**self._kv.to_dict())
        kv.compression_achieved = (
            round(self._seq_len * self.shape.rows_per_token / self._live_entries, 4)
            if self._live_entries
            else 1.0
        )
        return kv
