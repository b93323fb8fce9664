"""Token and KV-memory accounting across a run: a callback handler and a context manager.

``DMSMemoryCallbackHandler`` reads what ChatDMS puts on each finished message
(``usage_metadata``, ``response_metadata["kv_memory"]`` and ``["budget_plan"]``) and sums it per
model. ``get_dms_usage_callback()`` attaches one to every run started inside a ``with`` block,
like LangChain's ``get_usage_metadata_callback()``.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook

from budgetllm import format_bytes


@dataclass
class CallRecord:
    """One model call: tokens, KV memory and the budget it ran under."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a reused compressed cache
    thinking_budget: int | None = None
    compression_requested: float | None = None
    compression_achieved: float | None = None
    logical_bytes: int = 0
    live_bytes: int = 0
    peak_live_bytes: int = 0
    reserved_bytes: int = 0
    evicted_tokens: int = 0
    kv_bytes_read: int = 0
    finish_reason: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    step: int | None = None


@dataclass
class ModelTotals:
    """Sums over the calls of one model (peaks are maxima)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    logical_bytes: int = 0
    live_bytes: int = 0
    peak_live_bytes: int = 0
    evicted_tokens: int = 0
    kv_bytes_read: int = 0

    def add(self, rec: CallRecord) -> None:
        self.calls += 1
        self.input_tokens += rec.input_tokens
        self.output_tokens += rec.output_tokens
        self.reasoning_tokens += rec.reasoning_tokens
        self.cached_tokens += rec.cached_tokens
        self.total_tokens += rec.input_tokens + rec.output_tokens
        self.logical_bytes += rec.logical_bytes
        self.live_bytes += rec.live_bytes
        self.peak_live_bytes = max(self.peak_live_bytes, rec.peak_live_bytes)
        self.evicted_tokens += rec.evicted_tokens
        self.kv_bytes_read += rec.kv_bytes_read

    @property
    def compression_achieved(self) -> float:
        """Logical over live bytes, summed over calls (1.0 when nothing was recorded)."""
        return self.logical_bytes / self.live_bytes if self.live_bytes else 1.0


def _int(d: dict, key: str) -> int:
    v = d.get(key)
    return int(v) if isinstance(v, (int, float)) else 0


class DMSMemoryCallbackHandler(BaseCallbackHandler):
    """Aggregates tokens and KV memory per model across a run (thread-safe).

    Attributes:
        totals: model name -> ModelTotals.
        calls: one CallRecord per finished model call, in order.
        usage_metadata: model name -> summed LangChain UsageMetadata (as
            ``UsageMetadataCallbackHandler`` keeps it).

    Messages without a ``model_name`` are skipped; messages from other chat models count
    tokens only.
    """

    raise_error = False

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.totals: dict[str, ModelTotals] = {}
        self.calls: list[CallRecord] = []
        self.usage_metadata: dict[str, dict[str, Any]] = {}
        self._params: dict[UUID, dict[str, Any]] = {}

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, **kwargs: Any) -> None:
        params = kwargs.get("invocation_params") or {}
        with self._lock:
            self._params[run_id] = {k: params.get(k) for k in ("thinking_budget", "compression", "agent_budget")}

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            params = self._params.pop(run_id, {})
        try:
            generation = response.generations[0][0]
        except IndexError:
            return
        if not isinstance(generation, ChatGeneration) or not isinstance(generation.message, AIMessage):
            return
        message = generation.message
        meta = message.response_metadata or {}
        usage = message.usage_metadata
        model = meta.get("model_name")
        if not model or usage is None:
            return
        kv = meta.get("kv_memory") or {}
        plan = meta.get("budget_plan") or {}
        details = usage.get("output_token_details") or {}
        rec = CallRecord(
            model=model,
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
            reasoning_tokens=int(details.get("reasoning", 0) or 0),
            cached_tokens=int((usage.get("input_token_details") or {}).get("cache_read", 0) or 0),
            thinking_budget=plan.get("thinking_budget", params.get("thinking_budget")),
            compression_requested=kv.get("compression_requested", plan.get("compression", params.get("compression"))),
            compression_achieved=kv.get("compression_achieved"),
            logical_bytes=_int(kv, "logical_bytes"),
            live_bytes=_int(kv, "live_bytes"),
            peak_live_bytes=_int(kv, "peak_live_bytes"),
            reserved_bytes=_int(kv, "reserved_bytes"),
            evicted_tokens=_int(kv, "evicted_tokens"),
            kv_bytes_read=_int(kv, "kv_bytes_read"),
            finish_reason=meta.get("finish_reason"),
            reasons=dict(plan.get("reasons") or {}),
            step=plan.get("step", getattr(params.get("agent_budget"), "step", None)),
        )
        from langchain_core.messages.ai import add_usage

        with self._lock:
            self.calls.append(rec)
            self.totals.setdefault(model, ModelTotals()).add(rec)
            prev = self.usage_metadata.get(model)
            self.usage_metadata[model] = add_usage(prev, usage) if prev else dict(usage)

    # -- reading -------------------------------------------------------------------------------

    @property
    def total_tokens(self) -> int:
        return sum(t.total_tokens for t in self.totals.values())

    @property
    def reasoning_tokens(self) -> int:
        return sum(t.reasoning_tokens for t in self.totals.values())

    @property
    def peak_live_bytes(self) -> int:
        return max((t.peak_live_bytes for t in self.totals.values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "totals": {m: {**asdict(t), "compression_achieved": t.compression_achieved} for m, t in self.totals.items()},
                "calls": [asdict(c) for c in self.calls],
            }

    def report(self) -> str:
        """A readable table: one line per call, then totals per model."""
        with self._lock:
            calls = list(self.calls)
            totals = dict(self.totals)
        lines = ["call  model                      in   out  think  budget  CR req/got   peak KV   reasons"]
        for i, c in enumerate(calls, 1):
            budget = "-" if c.thinking_budget is None else str(c.thinking_budget)
            req = "-" if c.compression_requested is None else f"{c.compression_requested:g}"
            got = "-" if c.compression_achieved is None else f"{c.compression_achieved:.2f}"
            reasons = "; ".join(f"{k}: {v}" for k, v in c.reasons.items())
            lines.append(
                f"{i:>4}  {c.model[:24]:<24} {c.input_tokens:>5} {c.output_tokens:>5} {c.reasoning_tokens:>6}"
                f" {budget:>7}  {req:>5}/{got:<5} {format_bytes(c.peak_live_bytes):>9}   {reasons}"
            )
        for model, t in totals.items():
            lines.append(
                f"total {model}: {t.calls} calls, {t.input_tokens} in ({t.cached_tokens} from cache)"
                f" + {t.output_tokens} out"
                f" ({t.reasoning_tokens} reasoning) = {t.total_tokens} tokens; KV peak {format_bytes(t.peak_live_bytes)},"
                f" logical {format_bytes(t.logical_bytes)} vs live {format_bytes(t.live_bytes)}"
                f" (x{t.compression_achieved:.2f}), {t.evicted_tokens} evicted, {format_bytes(t.kv_bytes_read)} read"
            )
        if not calls:
            lines.append("(no calls recorded)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"DMSMemoryCallbackHandler(calls={len(self.calls)}, total_tokens={self.total_tokens}, "
            f"reasoning_tokens={self.reasoning_tokens}, peak_live_bytes={self.peak_live_bytes})"
        )


_dms_usage_callback_var: ContextVar[DMSMemoryCallbackHandler | None] = ContextVar("dms_usage_callback", default=None)
register_configure_hook(_dms_usage_callback_var, inheritable=True)


@contextmanager
def get_dms_usage_callback() -> Generator[DMSMemoryCallbackHandler, None, None]:
    """Attach a DMSMemoryCallbackHandler to every LangChain run started in the block.

    As with ``get_usage_metadata_callback``, nested blocks do not share: calls made inside an
    inner block are counted by the inner handler only.

    .. code-block:: python

        with get_dms_usage_callback() as cb:
            agent.invoke({"messages": [...]})
        print(cb.report())
    """
    handler = DMSMemoryCallbackHandler()
    token = _dms_usage_callback_var.set(handler)
    try:
        yield handler
    finally:
        _dms_usage_callback_var.reset(token)
