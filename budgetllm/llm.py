"""The composition root: a model, an engine backend, a budget policy and accounting behind one API."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

from budgetllm.accounting.meter import KVMeter, KVShape
from budgetllm.concurrency import note_started, thread_stream
from budgetllm.engine import Backend
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.output import CallOutput
from budgetllm.engine.request import GenerationRequest
from budgetllm.engine.thinking import ThinkingController
from budgetllm.errors import InvalidRequestError
from budgetllm.options import CallOptions, check_option, check_policy_tier, validate_messages
from budgetllm.policy.base import BudgetPolicy, CallContext, FixedPolicy, ModelProfile, RequestedLimits
from budgetllm.policy.fit import PlannedPolicy, check_fitted, escalate_call, plan_call
from budgetllm.policy.shipped import shipped_calibration
from budgetllm.prompting import Prompter
from budgetllm.types import Generation, SamplingParams, StreamEvent, ThinkingConfig


class LLM:
    """A local model that generates with a DMS-compressed KV cache.

    >>> llm = LLM.from_pretrained()                      # embedded SmolLM2-135M-Instruct, offline
    >>> out = llm.generate("What is 7*6?", compression=8, thinking_budget=64)
    >>> out.text, out.reasoning, out.usage.kv.compression_achieved
    """

    def __init__(self, loaded, backend: Backend, *, compression: float = 8.0, policy: BudgetPolicy | None = None,
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
        think = self.thinking_config  # what opening and closing a thinking block costs, in tokens
        self._think_tokens = (len(self.prompter.encode_text(think.open_tag)),
                              len(self.prompter.encode_text(think.close_tag + think.after_close)))
        self._output = CallOutput(self.prompter, self.thinking_config, self.model_name, self._sinks)
        self._closed = False
        # budgetllm.constrain.GrammarCompiler: made on the first constrained call, then kept (with its
        # compiled grammars) until close(); building it (xgrammar's tokenizer info) takes ~0.1 s.
        self._grammar = None
        self._grammar_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the engine, free its KV pool, CUDA graphs and the model's memory. Idempotent; any
        later call raises BudgetLLMError. ``with LLM.from_pretrained(...) as llm:`` closes on exit."""
        if self._closed:
            return
        self._closed = True
        backend, self.backend, self.loaded = self.backend, None, None
        self._grammar = None
        backend.close()  # part of the Backend protocol (budgetllm.engine)
        del backend
        _free_memory()

    @property
    def closed(self) -> bool:
        """True after close(): holders of a shared engine (ChatDMS) call get_llm again."""
        return self._closed

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            from budgetllm.errors import BudgetLLMError

            raise BudgetLLMError(f"this LLM ({self.model_name}) is closed; load it again to generate")

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | None = None, *, compression: float = 8.0, device: str | None = None,
                        backend: str | None = None, dtype: Any = None, policy: BudgetPolicy | None = None,
                        adapter: str | None = None, progress: bool = True, tokenizer: str | None = None,
                        thresholds: str | None = None, **backend_options: Any) -> LLM:
        """Load ``model`` (None: the embedded default) and pick a backend.

        backend: "reference" (PyTorch, any device; the test oracle), "paged" (the fast GPU engine) or
        "cpu" (the fast CPU path); default "paged" on CUDA, "cpu" on the CPU, else "reference".
        tokenizer: another tokenizer (HF id or directory); thresholds: a threshold-table file (see
        ``budgetllm calibrate-thresholds``).
        """
        from budgetllm.models.loading import load_model

        _check_compression(compression)
        loaded = load_model(model, device=device, dtype=dtype, adapter=adapter, progress=progress,
                            tokenizer=tokenizer, thresholds=thresholds)
        backend = backend or {"cuda": "paged", "cpu": "cpu"}.get(loaded.device.type, "reference")
        if backend == "cpu":
            from budgetllm.engine.cpu import CPUBackend

            engine = CPUBackend(loaded, **backend_options)
        elif backend == "reference":
            from budgetllm.engine.reference.backend import ReferenceBackend

            engine = ReferenceBackend(loaded)
        elif backend == "paged":
            if loaded.device.type != "cuda":
                raise InvalidRequestError("backend", "the paged backend needs a CUDA GPU; use backend='reference'")
            from budgetllm.engine.paged.backend import PagedBackend

            engine = PagedBackend(loaded, **backend_options)
        else:
            raise InvalidRequestError("backend", f"unknown backend {backend!r}; use 'reference', 'paged' or 'cpu'")
        return cls(loaded, engine, compression=compression, policy=policy)

    # -- facts ------------------------------------------------------------------------------
    @property
    def max_context(self) -> int:
        self._check_open()  # closed: a clear error, not the None left by close()
        return self.loaded.max_context

    @property
    def profile(self) -> ModelProfile:
        dms = self.loaded.dms
        return ModelProfile(
            name=self.model_name, kv_bytes_per_token=self.kv_shape.token_bytes, window=dms.window,
            native_compression=dms.native_cr if dms.has_decisions else 1.0, max_context=self.max_context,
            supports_compression=dms.has_decisions, thinking_open_tokens=self._think_tokens[0],
            thinking_close_tokens=self._think_tokens[1], calibration=shipped_calibration(self.model_name),
        )

    def count_tokens(self, messages, tools: list[dict] | None = None) -> int:
        validate_messages(messages)
        if tools is not None:
            check_option("tools", tools)
        return len(self.prompter.encode_prompt(messages, tools))

    def add_usage_sink(self, sink) -> None:
        """``sink(model_name, usage)`` is called after every call (e.g. an accounting UsageLog)."""
        self._sinks.append(sink)

    def pool_stats(self) -> dict:
        self._check_open()
        return self.backend.pool_stats()

    # -- generation -------------------------------------------------------------------------
    def generate(self, messages, **opts: Any) -> Generation:
        """Generate one answer. A policy with ``escalate`` (policy files with retries) gets another
        attempt with its escalated plan when the answer came back empty."""
        final = self._generate_once(messages, opts)
        policy = opts.get("policy") or self.policy
        attempt = 1
        while not final.text.strip() and not final.tool_calls and hasattr(policy, "escalate"):
            call = CallOptions.parse(dict(opts))
            prompt_ids, opened = self._prompt(messages, call)
            nxt = escalate_call(policy, self._context(call, len(prompt_ids), opened), final.usage.plan, attempt)
            if nxt is None:
                break
            attempt += 1  # the retry runs the fitted escalated plan as it is (fitting it again changes nothing)
            final = self._generate_once(messages, dict(opts, policy=PlannedPolicy(replace(nxt, escalation_attempt=attempt))))
        return final

    def _generate_once(self, messages, opts: dict) -> Generation:
        final = None
        for event in self.stream(messages, **opts):
            if event.kind == "done":
                final = event.generation
        assert final is not None
        return final

    def stream(self, messages, **opts: Any) -> Iterator[StreamEvent]:
        """Stream reasoning / text deltas, complete tool calls, then a "done" event with usage.
        Closing the iterator early cancels the request."""
        self._check_open()
        call = CallOptions.parse(opts)
        validate_messages(messages)
        prompt_ids, opened = self._prompt(messages, call)
        check_policy_tier(call.policy or self.policy, call.policy_tier)
        # The one budget fit happens in the policy layer; from here on the plan is only checked.
        plan = plan_call(call.policy or self.policy, self._context(call, len(prompt_ids), opened))
        ctrl = ThinkingController(plan.thinking_budget, plan.answer_reserve, plan.max_tokens,
                                  encode=self.prompter.encode_text, config=self.thinking_config)
        history = len(prompt_ids)  # the next turn renders this turn without the thinking suffix
        if not opened:
            prompt_ids = prompt_ids + self.prompter.encode_text(ctrl.prompt_suffix())
        constraint = self._constraint(call)
        forced_call = self.prompter.tool_call_prefix(call.tool_choice, call.tools)
        if forced_call and constraint is None:  # tool_choice "any"/"required"/a name: the answer starts inside a tool call
            ctrl.answer_prefix = self.prompter.encode_text(forced_call)
        check_fitted(plan, len(prompt_ids), self.max_context)
        rule = EvictionRule.for_call(self.loaded.dms, plan.compression, len(prompt_ids) + plan.max_tokens, prompt_ids,
                                     self.loaded)
        sampling = SamplingParams(
            temperature=plan.temperature if plan.temperature is not None else call.temperature,
            top_p=plan.top_p if plan.top_p is not None else call.top_p, top_k=call.top_k, seed=call.seed)
        req = GenerationRequest(
            prompt_ids=prompt_ids, rule=rule, sampling=sampling, controller=ctrl,
            meter=KVMeter(self.kv_shape, rule.ratio, rule.mode, window=_tokens_kept_before_eviction(rule)),
            eos_ids=self.prompter.eos_ids,
            banned_after_thinking=self.prompter.think_tag_ids(self.thinking_config), constraint=constraint,
            keep_at=(history,) if history < len(prompt_ids) else ())
        note_started(req)  # astream: its consumer may cancel while the engine still prefills
        try:
            yield from self._output.events(self.backend, req, plan, stop=call.stop, with_tools=bool(call.tools))
        finally:
            if constraint is not None:
                constraint.close()  # ended, cancelled or failed: the matcher goes

    def _constraint(self, call: CallOptions):
        """The call's grammar (response_format, its tool calls, or both), or None (budgetllm.constrain)."""
        from budgetllm.constrain import GrammarCompiler, available, call_spec

        spec = call_spec(call.response_format, call.tools, call.tool_choice, self.prompter.tool_format())
        if spec is None or (call.response_format is None and not available()):
            return None  # without xgrammar, tool calls run unconstrained (and are still parsed and checked)
        with self._grammar_lock:  # concurrent first calls build one compiler
            if self._grammar is None:
                self._grammar = GrammarCompiler(self.tokenizer, getattr(self.loaded.config, "vocab_size", None))
            compiler = self._grammar
        return compiler.constraint(spec, self.prompter.eos_ids)

    def _prompt(self, messages, call: CallOptions) -> tuple[list[int], bool]:
        """The prompt's token ids, and whether the template already opens a thinking block
        (R1 distills: the model then thinks without being asked)."""
        text = self.prompter.render(messages, call.tools)
        return self.prompter.encode_text(text), text.rstrip().endswith(self.thinking_config.open_tag.strip())

    def _context(self, call: CallOptions, prompt_tokens: int, opened: bool = False) -> CallContext:
        return CallContext(
            prompt_tokens=prompt_tokens,
            requested=RequestedLimits(call.thinking_budget, call.compression, call.reasoning_effort,
                                      call.max_tokens, call.temperature_requested, call.top_p_requested,
                                      answer_reserve=call.answer_reserve),
            agent=call.agent_budget or CallContext.__dataclass_fields__["agent"].default_factory(),
            model=self.profile, tool_name=call.tool_name, tier=call.policy_tier, thinking_open=opened,
            **self._pool_memory())

    def _pool_memory(self) -> dict:
        stats = self.backend.pool_stats()
        if "free_bytes" in stats:
            return {"free_kv_bytes": stats["free_bytes"], "total_kv_bytes": stats.get("total_bytes")}
        return {}

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

    def astream(self, messages, **opts: Any) -> AsyncIterator[StreamEvent]:
        """The sync stream run in a worker thread; ``aclose()`` cancels the request."""
        return thread_stream(self.stream, messages, opts)


def _check_compression(value: float) -> float:
    if value is None:
        raise InvalidRequestError("compression", "must be a number >= 1 (1 = no compression), got None")
    return float(check_option("compression", value))  # the bounds of budgetllm.options.CallOptions


def _free_memory() -> None:
    """Collect the engine's reference cycles (graphs <-> runner) and hand cached GPU blocks back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tokens_kept_before_eviction(rule) -> int:
    """How long a sequence must grow before the rule can drop anything (0: it never does)."""
    if rule.mode == "dms":
        return rule.window
    return rule.window + rule.sinks if rule.mode == "window" else 0


__all__ = ["LLM", "EvictionRule"]
