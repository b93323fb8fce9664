"""The composition root: a model, an engine backend, a budget policy and accounting behind one API."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from budgetllm.accounting.meter import KVMeter, KVShape
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.generation import GenerationRequest
from budgetllm.engine.thinking import ThinkingController
from budgetllm.errors import InvalidRequestError, PromptTooLongError
from budgetllm.options import CallOptions, resolve_rule
from budgetllm.policy.base import BudgetPolicy, CallContext, FixedPolicy, ModelProfile, RequestedLimits
from budgetllm.prompting import Prompter
from budgetllm.types import Generation, SamplingParams, StreamEvent, ThinkingConfig, Usage


class LLM:
    """A local model that generates with a DMS-compressed KV cache.

    >>> llm = LLM.from_pretrained()                      # embedded SmolLM2-135M-Instruct, offline
    >>> out = llm.generate("What is 7*6?", compression=8, thinking_budget=64)
    >>> out.text, out.reasoning, out.usage.kv.compression_achieved
    """

    def __init__(self, loaded, backend, *, compression: float = 8.0, policy: BudgetPolicy | None = None,
                 thinking: ThinkingConfig | None = None):
        self.loaded = loaded
        self.backend = backend
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.name
        self.compression = _check_compression(compression)
        self.policy: BudgetPolicy = policy or FixedPolicy(compression=self.compression)
        self.thinking_config = thinking or ThinkingConfig()
        self.prompter = Prompter(self.tokenizer)
        cfg = loaded.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.kv_shape = KVShape(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim,
                                dtype_bytes=loaded.dtype.itemsize)
        self._sinks: list = []

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | None = None, *, compression: float = 8.0, device: str | None = None,
                        backend: str | None = None, dtype: Any = None, policy: BudgetPolicy | None = None,
                        adapter: str | None = None, progress: bool = True, **backend_options: Any) -> LLM:
        """Load ``model`` (None: the embedded default) and pick a backend.

        backend: "reference" (PyTorch, any device) or "paged" (the fast GPU engine); default
        "paged" on CUDA, else "reference".
        """
        from budgetllm.models.loading import load_model

        _check_compression(compression)
        loaded = load_model(model, device=device, dtype=dtype, adapter=adapter, progress=progress)
        backend = backend or ("paged" if loaded.device.type == "cuda" else "reference")
        if backend == "reference":
            from budgetllm.engine.generation import ReferenceBackend

            engine = ReferenceBackend(loaded)
        elif backend == "paged":
            if loaded.device.type != "cuda":
                raise InvalidRequestError("backend", "the paged backend needs a CUDA GPU; use backend='reference'")
            from budgetllm.engine.paged_backend import PagedBackend

            engine = PagedBackend(loaded, **backend_options)
        else:
            raise InvalidRequestError("backend", f"unknown backend {backend!r}; use 'reference' or 'paged'")
        return cls(loaded, engine, compression=compression, policy=policy)

    # -- facts ------------------------------------------------------------------------------
    @property
    def max_context(self) -> int:
        return self.loaded.max_context

    @property
    def profile(self) -> ModelProfile:
        dms = self.loaded.dms
        return ModelProfile(
            name=self.model_name, kv_bytes_per_token=self.kv_shape.token_bytes, window=dms.window,
            native_compression=dms.native_cr if dms.has_decisions else 1.0, max_context=self.max_context,
            supports_compression=dms.has_decisions,
        )

    def count_tokens(self, messages, tools: list[dict] | None = None) -> int:
        return len(self.prompter.encode_prompt(messages, tools))

    def add_usage_sink(self, sink) -> None:
        """``sink(model_name, usage)`` is called after every call (e.g. an accounting UsageLog)."""
        self._sinks.append(sink)

    def pool_stats(self) -> dict:
        return self.backend.pool_stats()

    # -- generation -------------------------------------------------------------------------
    def generate(self, messages, **opts: Any) -> Generation:
        """Generate one answer. A policy with ``escalate`` (policy files with retries) gets another
        attempt with its escalated plan when the answer came back empty."""
        final = self._generate_once(messages, opts)
        policy = opts.get("policy") or self.policy
        attempt = 1
        while not final.text.strip() and not final.tool_calls and hasattr(policy, "escalate"):
            ctx = self._context(CallOptions.parse(dict(opts)), final.usage.input_tokens)
            previous = final.usage.plan or {}
            nxt = policy.escalate(ctx, self._plan_from_dict(previous), attempt)
            if nxt is None:
                break
            attempt += 1
            retry = dict(opts, thinking_budget=nxt.thinking_budget, compression=nxt.compression,
                         max_tokens=nxt.max_tokens)
            final = self._generate_once(messages, retry)
            if final.usage.plan is not None:
                final.usage.plan["escalation_attempt"] = attempt
        return final

    def _generate_once(self, messages, opts: dict) -> Generation:
        final = None
        for event in self.stream(messages, **opts):
            if event.kind == "done":
                final = event.generation
        assert final is not None
        return final

    @staticmethod
    def _plan_from_dict(d: dict):
        from dataclasses import fields

        from budgetllm.policy.base import Plan

        names = {f.name for f in fields(Plan)}
        return Plan(**{k: v for k, v in d.items() if k in names})

    def stream(self, messages, **opts: Any) -> Iterator[StreamEvent]:
        """Stream reasoning / text deltas, complete tool calls, then a "done" event with usage.
        Closing the iterator early cancels the request."""
        call = CallOptions.parse(opts)
        prompt_text = self.prompter.render(messages, call.tools)
        prompt_ids = self.prompter.encode_text(prompt_text)
        plan = self._plan(call, len(prompt_ids))
        # Templates that already open the block (R1 distills) think without being asked.
        opened = prompt_text.rstrip().endswith(self.thinking_config.open_tag.strip())
        reserve = plan.answer_reserve
        if call.answer_reserve is None and plan.thinking_budget:
            # A default reserve never starves a budget the caller asked for: it shrinks to what the
            # budget leaves (at least a quarter of max_tokens stays for the answer).
            reserve = min(reserve, max(plan.max_tokens - plan.thinking_budget, plan.max_tokens // 4))
        if reserve != plan.answer_reserve:
            from dataclasses import replace

            plan = replace(plan, answer_reserve=reserve, reasons={
                **plan.reasons, "answer_reserve": f"shrunk to {reserve} so the thinking budget fits max_tokens"})
        budget = plan.thinking_budget
        if opened and budget is None:
            budget = plan.max_tokens
        ctrl = ThinkingController(budget, reserve, plan.max_tokens,
                                  encode=self.prompter.encode_text, config=self.thinking_config)
        history = len(prompt_ids)  # the next turn renders this turn without the thinking suffix
        if not opened:
            prompt_ids = prompt_ids + self.prompter.encode_text(ctrl.prompt_suffix())
        forced_call = self.prompter.tool_call_prefix(call.tool_choice, call.tools)
        if forced_call:  # tool_choice "any"/"required"/a name: the answer starts inside a tool call
            ctrl.answer_prefix = self.prompter.encode_text(forced_call)
        if len(prompt_ids) + min(plan.max_tokens, plan.answer_reserve) > self.max_context:
            raise PromptTooLongError(len(prompt_ids), self.max_context, plan.answer_reserve)
        plan_max = min(plan.max_tokens, self.max_context - len(prompt_ids))
        ctrl.max_tokens = plan_max
        rule = resolve_rule(self.loaded.dms, plan.compression, len(prompt_ids) + plan_max, self.backend, prompt_ids)
        sampling = SamplingParams(
            temperature=plan.temperature if plan.temperature is not None else call.temperature,
            top_p=plan.top_p if plan.top_p is not None else call.top_p, top_k=call.top_k, seed=call.seed)
        req = GenerationRequest(
            prompt_ids=prompt_ids, rule=rule, sampling=sampling, controller=ctrl,
            meter=KVMeter(self.kv_shape, plan.compression, rule.mode), eos_ids=self.prompter.eos_ids,
            banned_after_thinking=self.prompter.think_tag_ids(self.thinking_config),
            keep_at=(history,) if history < len(prompt_ids) else ())
        yield from self._drive(req, call, plan, ctrl)

    def _context(self, call: CallOptions, prompt_tokens: int) -> CallContext:
        return CallContext(
            prompt_tokens=prompt_tokens,
            requested=RequestedLimits(call.thinking_budget, call.compression, call.reasoning_effort,
                                      call.max_tokens, call.temperature_requested, call.top_p_requested),
            agent=call.agent_budget or CallContext.__dataclass_fields__["agent"].default_factory(),
            model=self.profile, tool_name=call.tool_name, tier=call.policy_tier,
            **self._pool_memory())

    def _plan(self, call: CallOptions, prompt_tokens: int):
        policy = call.policy or self.policy
        plan = policy.plan(self._context(call, prompt_tokens))
        if plan.compression <= 0 or not math.isfinite(plan.compression):
            raise InvalidRequestError("compression", f"the policy chose {plan.compression}; it must be > 0")
        if call.answer_reserve is not None:
            from dataclasses import replace

            plan = replace(plan, answer_reserve=min(call.answer_reserve, plan.max_tokens))
        return plan

    def _pool_memory(self) -> dict:
        stats = self.backend.pool_stats()
        if "free_bytes" in stats:
            return {"free_kv_bytes": stats["free_bytes"], "total_kv_bytes": stats.get("total_bytes")}
        return {}

    def _drive(self, req: GenerationRequest, call: CallOptions, plan, ctrl) -> Iterator[StreamEvent]:
        from budgetllm.engine.detok import IncrementalDecoder, TextAssembler

        decoder = IncrementalDecoder(self.prompter.decode)
        text = TextAssembler(ctrl.thinking, self.thinking_config.close_tag.strip(), call.stop or [],
                             open_tag=self.thinking_config.open_tag.strip() if plan.thinking_budget != 0 else "")
        tools = self.prompter.tool_splitter() if call.tools else None
        generated: list[int] = []
        finish = "length"
        steps = self.backend.run(req)
        try:
            for step in steps:
                if step.token_id >= 0 and step.finished is None:
                    generated.append(step.token_id)
                    # (the engine's controller follows the think tags itself, by token ids)
                    pieces = text.feed(decoder.push(step.token_id))
                    yield from self._emit(pieces, tools)
                    if text.stopped:
                        finish = "stop"
                        break
                if step.finished:
                    finish = step.finished
                    break
        except GeneratorExit:
            req.cancelled = True
            raise
        finally:
            steps.close()
        yield from self._emit(text.flush(), tools)
        gen = self._finish(req, plan, ctrl, text, tools, generated, finish)
        yield from gen[1]
        yield StreamEvent("done", generation=gen[0])

    def _emit(self, pieces, tools) -> Iterator[StreamEvent]:
        for kind, piece in pieces:
            if kind == "text" and tools is not None:
                for _, visible in tools.feed(piece):
                    if visible:
                        yield StreamEvent("text", visible)
            elif piece:
                yield StreamEvent(kind, piece)

    def _finish(self, req, plan, ctrl, text, tools, generated, finish):
        events: list[StreamEvent] = []
        answer, calls, invalid = text.answer, [], []
        if tools is not None:
            tail = tools.finish()
            if tail and "<tool_call>" not in tail:
                events.append(StreamEvent("text", tail))
            answer, calls, invalid = self.prompter.parse_tool_calls(text.answer)
            events += [StreamEvent("tool_call", tool_call=c) for c in [*calls, *invalid]]
            if calls or invalid:
                finish = "tool_calls"
        plan_dict = plan.to_dict()
        plan_dict["forced_close"] = ctrl.forced_close
        usage = Usage(
            input_tokens=len(req.prompt_ids), output_tokens=len(generated), reasoning_tokens=ctrl.reasoning_tokens,
            cached_tokens=req.cached_tokens,
            kv=req.meter.result(), prefill_seconds=req.prefill_seconds, decode_seconds=req.decode_seconds,
            plan=plan_dict)
        gen = Generation(text=answer.strip() if calls else answer, reasoning=text.reasoning, finish_reason=finish,
                         usage=usage, prompt_token_ids=req.prompt_ids, token_ids=generated, tool_calls=calls,
                         invalid_tool_calls=invalid, model=self.model_name)
        for sink in self._sinks:
            sink(self.model_name, usage)
        return gen, events

    # -- async ------------------------------------------------------------------------------
    async def agenerate(self, messages, **opts: Any) -> Generation:
        """Built on :meth:`astream`, so cancelling the awaiting task cancels the request."""
        final = None
        stream = self.astream(messages, **opts)
        try:
            async for event in stream:
                if event.kind == "done":
                    final = event.generation
        finally:
            await stream.aclose()
        assert final is not None
        return final

    async def astream(self, messages, **opts: Any) -> AsyncIterator[StreamEvent]:
        """The sync stream run in a worker thread; ``aclose()`` cancels the request."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def worker() -> None:
            it = self.stream(messages, **opts)
            try:
                for event in it:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                    if stop.is_set():
                        break
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                it.close()
                loop.call_soon_threadsafe(queue.put_nowait, done)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


def _check_compression(value: float) -> float:
    if value is None or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise InvalidRequestError("compression", f"must be a number > 0 (1 = no compression), got {value!r}")
    return float(value)


_SHARED: dict[tuple, LLM] = {}
_SHARED_LOCK = threading.Lock()


def get_llm(model: str | None = None, *, backend: str | None = None, device: str | None = None,
            dtype: Any = None, **kwargs: Any) -> LLM:
    """One shared LLM per (model, backend, device, dtype) in this process; thread-safe, loads once."""
    key = (model, backend, device, str(dtype))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = LLM.from_pretrained(model, backend=backend, device=device, dtype=dtype, **kwargs)
        return _SHARED[key]


__all__ = ["LLM", "EvictionRule", "get_llm"]
