"""The KV cost model every policy shares (docs/notes/budget.md §3.1).

With prompt ``P``, generated tokens ``G`` (thinking + answer), compression ``CR``, DMS window
``w`` and width ``W`` (parallel samples):

* live KV tokens of one sequence of length ``t``: ``min(t, t / CR + w)``. A token marked for
  eviction stays visible for the window, so compression cannot beat a dense cache on short
  sequences: at least ``min(t, w)`` tokens are live.
* peak KV tokens: ``W * live(P + G)`` (the cache only grows while decoding).
* KV tokens read while decoding: ``W * sum_{t=P}^{P+G-1} live(t)``; the attention reads every
  live entry once per step. Computed in closed form, so a policy can search budgets cheaply.

Bytes are tokens times ``ModelProfile.kv_bytes_per_token``. The estimates are worst cases (every
allowed token generated), which is what a cap must hold against.
"""

from __future__ import annotations

import re
from dataclasses import replace

from budgetllm.policy.base import CallContext, Plan


def live_tokens(total: float, compression: float, window: int) -> float:
    """Tokens one sequence of ``total`` tokens keeps in its KV cache."""
    if compression <= 1.0:
        return float(total)
    return min(float(total), total / compression + window)


def peak_kv_tokens(prompt: int, generated: int, compression: float, window: int, width: int = 1) -> float:
    return width * live_tokens(prompt + generated, compression, window)


def _integral_live(a: float, b: float, compression: float, window: int) -> float:
    """Integral of live(t) over [a, b]: dense up to the crossover, compressed after it."""
    if b <= a:
        return 0.0
    if compression <= 1.0:
        crossover = float("inf")
    else:  # t == t / CR + w
        crossover = window * compression / (compression - 1.0)
    total = 0.0
    dense_end = min(b, crossover)
    if dense_end > a:
        total += (dense_end**2 - a**2) / 2.0
    start = max(a, crossover)
    if b > start:
        total += (b**2 - start**2) / (2.0 * compression) + window * (b - start)
    return total


def kv_tokens_read(prompt: int, generated: int, compression: float, window: int, width: int = 1) -> float:
    """KV entries the attention reads over ``generated`` decode steps (a latency proxy)."""
    return width * _integral_live(prompt, prompt + generated, compression, window)


def plan_peak_kv_tokens(context: CallContext, plan: Plan) -> float:
    return peak_kv_tokens(
        context.prompt_tokens, plan.max_tokens, plan.compression, context.model.window, plan.width
    )


def plan_kv_tokens_read(context: CallContext, plan: Plan) -> float:
    return kv_tokens_read(
        context.prompt_tokens, plan.max_tokens, plan.compression, context.model.window, plan.width
    )


def with_estimates(context: CallContext, plan: Plan) -> Plan:
    """The plan with ``peak_kv_bytes`` / ``kv_bytes_read`` filled in (None when bytes are unknown)."""
    per_token = context.model.kv_bytes_per_token
    if per_token <= 0:
        return replace(plan, peak_kv_bytes=None, kv_bytes_read=None)
    return replace(
        plan,
        peak_kv_bytes=int(plan_peak_kv_tokens(context, plan) * per_token),
        kv_bytes_read=int(plan_kv_tokens_read(context, plan) * per_token),
    )


def format_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; readable sizes for reasons and the CLI."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable; keeps type checkers quiet


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str) -> int:
    """'2GiB' -> 2147483648, '1.5 GB' -> 1500000000, 4096 -> 4096; ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size; write bytes or a number with a unit: 512MiB, 2GiB, 1.5GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
