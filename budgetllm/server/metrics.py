"""Server counters and the ``/metrics`` page (Prometheus text format, written by hand).

Hand-written rather than prometheus_client: a dozen lines of text do not justify a dependency,
and every number here is either a counter of this process or a value read from ``llm.pool_stats()``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from budgetllm.types import Usage

# tokens/s is reported over this window; Prometheus users can also rate() the counter instead.
RATE_WINDOW_S = 60.0


class ServerMetrics:
    """Thread-safe counters of one server process (one replica under Ray Serve)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.requests: dict[str, int] = {}  # outcome ("ok", "client_error", "cancelled", ...) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.cancelled = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, output tokens) of finished calls
        self._compression_sum = 0.0
        self._compression_n = 0

    def start(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finish(self, outcome: str, usage: Usage | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.in_flight -= 1
            self.requests[outcome] = self.requests.get(outcome, 0) + 1
            if outcome == "cancelled":
                self.cancelled += 1
            if usage is not None:
                self.prompt_tokens += usage.input_tokens
                self.completion_tokens += usage.output_tokens
                self.reasoning_tokens += usage.reasoning_tokens
                self._recent.append((now, usage.output_tokens))
                if usage.kv.compression_achieved > 0:
                    self._compression_sum += usage.kv.compression_achieved
                    self._compression_n += 1
            self._trim(now)

    def count(self, outcome: str) -> None:
        """A request refused before it started (bad JSON, wrong key, ...)."""
        with self._lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def compression_mean(self) -> float:
        with self._lock:
            return self._compression_sum / self._compression_n if self._compression_n else 0.0


def _num(stats: dict[str, Any], key: str) -> float:
    v = stats.get(key)
    return float(v) if isinstance(v, (int, float)) else 0.0


def _gauge(stats: dict[str, Any], key: str) -> float | None:
    return _num(stats, key) if key in stats else None


def render_metrics(metrics: ServerMetrics, pool: dict[str, Any], model: str) -> str:
    """The /metrics page. A gauge read from ``pool_stats()`` is left out when the backend does not
    report it (the reference backend has no pages): an absent series, not a false 0."""
    model = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")  # label escaping
    label = f'{{model="{model}"}}'
    compression = _num(pool, "compression_achieved_mean") or metrics.compression_mean()
    rows: list[tuple[str, str, str, float | dict[str, int] | None]] = [
        ("budgetllm_kv_pages_total", "gauge", "KV pool pages in all", _gauge(pool, "pages_total")),
        ("budgetllm_kv_pages_used", "gauge", "KV pool pages held by requests", _gauge(pool, "pages_used")),
        ("budgetllm_kv_pages_free", "gauge", "KV pool pages free", _gauge(pool, "pages_free")),
        ("budgetllm_kv_bytes_total", "gauge", "KV bytes in all (backends without pages)", _gauge(pool, "bytes_total")),
        ("budgetllm_kv_bytes_used", "gauge", "KV bytes held (backends without pages)", _gauge(pool, "bytes_used")),
        ("budgetllm_requests_active", "gauge", "requests the engine is running", _gauge(pool, "active")),
        ("budgetllm_requests_queued", "gauge", "requests waiting for KV memory", _gauge(pool, "queued")),
        ("budgetllm_http_requests_in_flight", "gauge", "chat requests the server is handling", metrics.in_flight),
        ("budgetllm_tokens_per_second", "gauge", f"output tokens/s over the last {RATE_WINDOW_S:.0f}s", metrics.tokens_per_second()),
        ("budgetllm_compression_achieved", "gauge", "mean achieved KV compression (logical/live)", compression),
        ("budgetllm_prompt_tokens_total", "counter", "prompt tokens of finished requests", metrics.prompt_tokens),
        ("budgetllm_completion_tokens_total", "counter", "generated tokens (reasoning included)", metrics.completion_tokens),
        ("budgetllm_reasoning_tokens_total", "counter", "reasoning tokens", metrics.reasoning_tokens),
        ("budgetllm_engine_tokens_generated_total", "counter", "tokens the engine generated", _gauge(pool, "tokens_generated")),
        ("budgetllm_requests_cancelled_total", "counter", "requests cancelled by a client disconnect", metrics.cancelled),
        ("budgetllm_requests_total", "counter", "chat requests by outcome", dict(metrics.requests)),
    ]
    lines: list[str] = []
    for name, kind, help_text, value in rows:
        if value is None:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        if isinstance(value, dict):
            for outcome, n in sorted(value.items()):
                lines.append(f'{name}{{model="{model}",outcome="{outcome}"}} {n}')
        else:
            lines.append(f"{name}{label} {value:g}")
    return "\n".join(lines) + "\n"
