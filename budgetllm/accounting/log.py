"""Usage logs (an event sink for every call) and their report."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from budgetllm.types import Usage


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class UsageLog:
    """Collects the usage of every call it is given; thread-safe. Use as an LLM sink."""

    records: list[tuple[str, Usage]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, model: str, usage: Usage) -> None:
        with self._lock:
            self.records.append((model, usage))

    def totals(self) -> dict[str, Any]:
        with self._lock:
            recs = list(self.records)
        return {
            "calls": len(recs),
            "input_tokens": sum(u.input_tokens for _, u in recs),
            "output_tokens": sum(u.output_tokens for _, u in recs),
            "reasoning_tokens": sum(u.reasoning_tokens for _, u in recs),
            "peak_live_bytes": max((u.kv.peak_live_bytes for _, u in recs), default=0),
            "logical_bytes": sum(u.kv.logical_bytes for _, u in recs),
            "live_bytes": sum(u.kv.live_bytes for _, u in recs),
            "kv_bytes_read": sum(u.kv.kv_bytes_read for _, u in recs),
        }


UsageSink = Callable[[str, Usage], None]


def too_short_to_compress(usage: Usage) -> bool:
    """True when compression was asked for but the whole call (prompt and output) fit in the
    eviction window: no token ever left it, so none could be dropped."""
    kv = usage.kv
    return kv.compression_requested > 1 and kv.window > 0 and usage.total_tokens <= kv.window


def _too_short(usage: Usage) -> list[tuple[str, str]]:
    if not too_short_to_compress(usage):
        return []
    return [("why not compressed", f"too short: {usage.total_tokens} tokens fit in the {usage.kv.window}-token "
                                   "window, and only tokens that leave it can be dropped")]


def usage_rows(usage: Usage) -> list[tuple[str, str]]:
    """The accounting table of one call as (field, value) rows."""
    kv = usage.kv
    rows = [
        ("input tokens", str(usage.input_tokens)),
        ("output tokens", str(usage.output_tokens)),
        ("  of which reasoning", str(usage.reasoning_tokens)),
        ("KV mode", kv.mode),
        ("compression requested", f"{kv.compression_requested:g}x"),
        ("compression achieved (measured)", f"{kv.compression_achieved:.2f}x"),
        *_too_short(usage),
        ("KV logical (dense would hold)", format_bytes(kv.logical_bytes)),
        ("KV live (kept)", format_bytes(kv.live_bytes)),
        ("KV peak live", format_bytes(kv.peak_live_bytes)),
        ("KV reserved by backend", format_bytes(kv.reserved_bytes)),
        ("evicted (layer, head, token) entries", str(kv.evicted_tokens)),
        ("KV bytes read in decode", format_bytes(kv.kv_bytes_read)),
        ("prefill time", f"{usage.prefill_seconds * 1000:.0f} ms"),
        ("decode time", f"{usage.decode_seconds * 1000:.0f} ms"),
    ]
    if usage.plan is not None:
        for key in ("thinking_budget", "answer_reserve", "compression", "max_tokens"):
            rows.append((f"plan: {key}", str(getattr(usage.plan, key))))
        for key, why in usage.plan.reasons.items():
            rows.append((f"why {key}", str(why)))
    return rows


def render_usage_table(usage: Usage, title: str = "accounting"):
    """A rich Table of one call's usage (rich is imported lazily)."""
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in usage_rows(usage):
        table.add_row(k, v)
    return table
