"""ChatDMS: a LangChain chat model over a budgetllm engine (local, or a budgetllm server).

Stream-first: ``_stream`` / ``_astream`` turn the engine's StreamEvents into AIMessageChunks;
``_generate`` / ``_agenerate`` aggregate them. Reasoning goes to
``additional_kwargs["reasoning_content"]``, usage (reasoning inside ``output_tokens``) and the
KV-memory record and budget plan go on the last chunk only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator

import budgetllm

PROVIDER = "dms"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

# Engine options ChatDMS forwards; each may be set on the instance and overridden per call.
_FIELD_OPTIONS = (
    "compression",
    "thinking_budget",
    "reasoning_effort",
    "max_tokens",
    "answer_reserve",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "policy_tier",
)
# Per-call only (from bind_tools, middleware, or invoke kwargs).
_CALL_ONLY_OPTIONS = ("tools", "tool_choice", "agent_budget", "tool_name", "policy", "response_format")
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def _check_option(name: str, value: Any) -> Any:
    """Reject an invalid setting with a ValueError that names the field; return it cleaned."""
    if value is None:
        return None
    if name == "compression":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"compression: must be a number > 0 (1 = no compression), got {value!r}")
        return float(value)
    if name in ("thinking_budget", "max_tokens", "answer_reserve", "top_k"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        return value
    if name == "temperature":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"temperature: must be a number >= 0 (0 = greedy), got {value!r}")
        return float(value)
    if name == "top_p":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"top_p: must be a number in (0, 1], got {value!r}")
        return float(value)
    if name == "reasoning_effort":
        if value not in _EFFORTS:
            raise ValueError(f"reasoning_effort: must be one of {', '.join(_EFFORTS)}, got {value!r}")
        return value
    return value


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def _text_content(content: Any, role: str) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            kind = block.get("type")
            if kind in ("text", "input_text", "output_text"):
                parts.append(str(block.get("text", "")))
            elif kind in ("reasoning", "thinking", "tool_use", "tool_call", "function_call", "tool_call_chunk"):
                continue  # reasoning is not re-sent; tool calls travel in tool_calls
            else:
                raise ValueError(f"ChatDMS takes text only; a {role} message has a {kind!r} content block")
    return "".join(parts)


def convert_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> the engine's OpenAI-style message dicts."""
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_content(m.content, "system")})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_content(m.content, "user")})
        elif isinstance(m, AIMessage):
            text = _text_content(m.content, "assistant")
            # What the model said in malformed calls (the raw text keeps its markup), so that an
            # error answer to it makes sense on the next turn.
            raw = [c["args"] for c in m.invalid_tool_calls if isinstance(c.get("args"), str) and c["args"]]
            if raw:
                text = "\n".join([text, *raw]) if text else "\n".join(raw)
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if m.tool_calls:
                msg["tool_calls"] = []
                for tc in m.tool_calls:
                    call_names[tc.get("id") or ""] = tc["name"]
                    msg["tool_calls"].append(
                        {"id": tc.get("id") or "", "type": "function", "function": {"name": tc["name"], "arguments": tc["args"]}}
                    )
            out.append(msg)
        elif isinstance(m, ToolMessage):
            content = m.content
            text = content if isinstance(content, str) else _tool_result_text(content)
            if m.status == "error" and not text.lower().startswith("error"):
                text = f"Error: {text}"
            msg = {"role": "tool", "content": text, "tool_call_id": m.tool_call_id}
            name = m.name or call_names.get(m.tool_call_id)
            if name:
                msg["name"] = name
            out.append(msg)
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _text_content(m.content, m.role)})
        else:
            raise ValueError(f"ChatDMS cannot send a message of type {type(m).__name__}")
    return out


def _tool_result_text(content: list) -> str:
    try:
        return _text_content(content, "tool")
    except ValueError:
        return json.dumps(content, ensure_ascii=False, default=str)


def _as_dict(record: Any) -> dict[str, Any]:
    if record is None:
        return {}
    if isinstance(record, Mapping):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return dict(vars(record))


# ---------------------------------------------------------------------------------------------
# StreamEvents -> AIMessageChunks
# ---------------------------------------------------------------------------------------------


class _ChunkBuilder:
    """Turns one call's StreamEvents into ChatGenerationChunks.

    One running block index across reasoning, text and tool-call blocks (the v1 content blocks
    need it); tool calls are held until the end so they come after all text; the last chunk
    carries usage and metadata, and any text the engine finalised but did not stream.
    """

    def __init__(self, model_name: str, decision: dict[str, Any] | None = None):
        self.model_name = model_name
        self.decision = decision
        self.index = -1
        self.block = ""
        self.text = ""
        self.reasoning = ""
        self.calls: list[Any] = []
        self.generation: Any = None

    def _bump(self, block: str) -> None:
        if block != self.block:
            self.block = block
            self.index += 1

    def _reasoning(self, delta: str) -> ChatGenerationChunk:
        self._bump("reasoning")
        self.reasoning += delta
        return ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": delta}))

    def _text(self, delta: str) -> ChatGenerationChunk:
        self._bump("text")
        self.text += delta
        return ChatGenerationChunk(message=AIMessageChunk(content=delta))

    def on_event(self, event: Any) -> Iterator[ChatGenerationChunk]:
        kind = event.kind
        if kind == "reasoning" and event.text:
            yield self._reasoning(event.text)
        elif kind == "text" and event.text:
            yield self._text(event.text)
        elif kind == "tool_call" and event.tool_call is not None:
            self.calls.append(event.tool_call)
        elif kind == "done":
            yield from self._finish(event.generation)

    def _finish(self, gen: Any) -> Iterator[ChatGenerationChunk]:
        self.generation = gen
        if gen is None:
            yield ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last"))
            return
        # Text the engine finalised without streaming it (e.g. text after a tool call).
        if gen.reasoning and not self.text and gen.reasoning.startswith(self.reasoning) and gen.reasoning != self.reasoning:
            yield self._reasoning(gen.reasoning[len(self.reasoning) :])
        if gen.text and gen.text.startswith(self.text) and gen.text != self.text:
            yield self._text(gen.text[len(self.text) :])
        calls = self.calls or [*gen.tool_calls, *gen.invalid_tool_calls]
        for call in calls:
            self.index += 1
            self.block = "tool_call_chunk"
            if hasattr(call, "arguments"):
                args = json.dumps(call.arguments, ensure_ascii=False)
            else:
                # The raw text keeps its markup, so it never parses as arguments: it stays invalid.
                args = call.raw
            chunk = tool_call_chunk(name=call.name, args=args, id=call.id, index=self.index)
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                usage_metadata=usage_metadata(gen.usage),
                response_metadata=response_metadata(gen, self.model_name, bool(calls), self.decision),
            )
        )


def usage_metadata(usage: Any) -> dict[str, Any]:
    """LangChain usage: reasoning inside output_tokens; prompt tokens served from a reused
    compressed cache as input_token_details["cache_read"]."""
    inp, out = int(usage.input_tokens), int(usage.output_tokens)
    meta: dict[str, Any] = {
        "input_tokens": inp,
        "output_tokens": out,
        "total_tokens": inp + out,
        "output_token_details": {"reasoning": int(usage.reasoning_tokens)},
    }
    cached = getattr(usage, "cached_tokens", None)
    if cached is not None:
        meta["input_token_details"] = {"cache_read": int(cached)}
    return meta


def response_metadata(
    gen: Any, default_name: str, has_calls: bool, decision: dict[str, Any] | None = None
) -> dict[str, Any]:
    """model_name, provider, finish_reason, kv_memory, budget_plan and timing of one call.

    ``decision``: a plan made outside the engine (BudgetMiddleware's); it becomes budget_plan,
    with the engine's own plan under budget_plan["engine_plan"].
    """
    usage = gen.usage
    finish = gen.finish_reason
    if has_calls and finish == "stop":
        finish = "tool_calls"
    meta: dict[str, Any] = {
        "model_name": gen.model or default_name,
        "model_provider": PROVIDER,
        "finish_reason": finish,
        "kv_memory": _as_dict(usage.kv),
        "budget_plan": {**decision, "engine_plan": _as_dict(usage.plan)} if decision else _as_dict(usage.plan),
        "timing": {
            "prefill_seconds": float(getattr(usage, "prefill_seconds", 0.0)),
            "decode_seconds": float(getattr(usage, "decode_seconds", 0.0)),
        },
    }
    return meta


def _message_from_chunks(chunks: list[ChatGenerationChunk], gen: Any) -> AIMessage:
    """The aggregated message; tool calls come from the engine's Generation (errors kept)."""
    merged = chunks[0].message
    for c in chunks[1:]:
        merged = merged + c.message
    kwargs: dict[str, Any] = {
        "content": merged.content,
        "additional_kwargs": merged.additional_kwargs,
        "response_metadata": merged.response_metadata,
        "usage_metadata": merged.usage_metadata,
        "id": merged.id,
    }
    if gen is not None:
        kwargs["tool_calls"] = [tool_call(name=c.name, args=c.arguments, id=c.id) for c in gen.tool_calls]
        kwargs["invalid_tool_calls"] = [
            invalid_tool_call(name=c.name, args=c.raw, id=c.id, error=c.error) for c in gen.invalid_tool_calls
        ]
    else:
        kwargs["tool_calls"] = merged.tool_calls
        kwargs["invalid_tool_calls"] = merged.invalid_tool_calls
    return AIMessage(**kwargs)


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------

_REMOTE: dict[tuple, Any] = {}
_REMOTE_LOCK = threading.Lock()


def _remote_llm(base_url: str, api_key: str | None, timeout: float | None, max_retries: int | None) -> Any:
    key = (base_url, api_key, timeout, max_retries)
    with _REMOTE_LOCK:
        if key not in _REMOTE:
            remote_cls = getattr(budgetllm, "RemoteLLM", None)
            if remote_cls is None:
                raise ImportError("base_url needs budgetllm.RemoteLLM (budgetllm's server client), which is not installed")
            kwargs: dict[str, Any] = {"api_key": api_key}
            import inspect

            params = inspect.signature(remote_cls).parameters
            if timeout is not None and "timeout" in params:
                kwargs["timeout"] = timeout
            if max_retries is not None and "max_retries" in params:
                kwargs["max_retries"] = max_retries
            _REMOTE[key] = remote_cls(base_url, **kwargs)
        return _REMOTE[key]


class _LazyProfile(dict):
    """A model profile whose ``max_input_tokens`` is read from the engine on first use.

    The engine (and so the context length) loads only when someone asks for the context length,
    so constructing ChatDMS stays cheap.
    """

    def __init__(self, static: dict[str, Any], context: Callable[[], int | None]):
        super().__init__(static)
        self._context = context
        self._filled = False

    def _fill(self) -> None:
        if not self._filled:
            self._filled = True
            n = self._context()
            if n:
                dict.__setitem__(self, "max_input_tokens", int(n))

    def __getitem__(self, key: str) -> Any:
        if key == "max_input_tokens":
            self._fill()
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key == "max_input_tokens":
            self._fill()
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if key == "max_input_tokens":
            self._fill()
        return super().__contains__(key)

    # Iteration and keys() do not load (LangChain checks the profile's keys on construction);
    # items(), values() and copy() do.
    def items(self):
        self._fill()
        return super().items()

    def values(self):
        self._fill()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._fill()
        return dict(super().items())


# ---------------------------------------------------------------------------------------------
# The chat model
# ---------------------------------------------------------------------------------------------


class ChatDMS(BaseChatModel):
    """A LangChain chat model that runs a budgetllm engine with a DMS-compressed KV cache.

    Setup:
        ``pip install "budgetllm[langchain]"``. ``ChatDMS()`` runs the embedded
        SmolLM2-135M-Instruct offline on the CPU; ``model`` takes a Hugging Face id, a local
        directory or a ``.gguf`` file; ``base_url`` talks to a ``budgetllm serve`` server instead.

    Key init args (each can also be passed per call: ``invoke(..., compression=4)``):
        compression: KV-cache compression ratio (1 = dense, exactly the base model).
        thinking_budget: max reasoning tokens (None: no thinking block; 0: thinking off).
        reasoning_effort: "none" ... "xhigh", mapped to a thinking budget by the policy.
        max_tokens, temperature, top_p, top_k, seed, stop: generation limits and sampling.
        policy: a budgetllm BudgetPolicy, or the path of a policy file.

    Instantiate:
        .. code-block:: python

            from langchain_budgetllm import ChatDMS

            llm = ChatDMS(compression=8, max_tokens=64)

    Invoke / stream:
        .. code-block:: python

            msg = llm.invoke("What is 2 + 2?", thinking_budget=32)
            msg.additional_kwargs.get("reasoning_content")   # the thinking text
            msg.usage_metadata                                # reasoning inside output_tokens
            msg.response_metadata["kv_memory"]                # bytes, peak, achieved ratio
            for chunk in llm.stream("Tell me a joke"):
                print(chunk.text, end="")

    Tool calling:
        .. code-block:: python

            llm_with_tools = llm.bind_tools([add, lookup])
            llm_with_tools.invoke("What is 3 + 4?").tool_calls

    Instances that name the same model (and backend, device, dtype) share one loaded engine.
    """

    model: str | None = None
    """HF id, local directory or .gguf path; None is the embedded SmolLM2-135M-Instruct."""
    compression: float | None = 8.0
    """KV-cache compression ratio; 1 is dense; None lets the policy decide."""
    thinking_budget: int | None = None
    """Max reasoning tokens; None: no thinking block; 0: thinking off."""
    reasoning_effort: str | None = None
    """"none" | "minimal" | "low" | "medium" | "high" | "xhigh"; the policy maps it to a budget."""
    policy: Any = Field(default=None, exclude=True)
    """A budgetllm BudgetPolicy, or the path of a YAML/TOML policy file."""
    policy_tier: str | None = None
    """A named tier of the policy file."""
    backend: str | None = None
    """Engine backend ("reference" or "paged"); None picks one for the device."""
    device: str | None = None
    dtype: str | None = None
    temperature: float | None = None
    """Sampling temperature; 0 is greedy; None is the engine default."""
    max_tokens: int | None = None
    """Cap on generated tokens (reasoning + answer)."""
    answer_reserve: int | None = None
    """Tokens kept for the answer after thinking closes."""
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    streaming: bool = False
    """Whether invoke() streams internally (callbacks get tokens)."""
    base_url: str | None = None
    """URL of a budgetllm OpenAI-compatible server; None runs the model in this process."""
    api_key: SecretStr | None = None
    timeout: float | None = None
    max_retries: int | None = 2

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    _llm: Any = PrivateAttr(default=None)
    _policy_obj: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @field_validator("compression", "thinking_budget", "max_tokens", "answer_reserve", "temperature", "top_p", "top_k", "reasoning_effort")
    @classmethod
    def _validate_option(cls, value: Any, info: Any) -> Any:
        return _check_option(info.field_name, value)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_llm(cls, llm: Any, **kwargs: Any) -> ChatDMS:
        """A ChatDMS over an engine you built (an LLM, a RemoteLLM, or anything with their surface)."""
        chat = cls(**kwargs)
        chat._llm = llm
        if kwargs.get("model") is None:
            chat.model = getattr(llm, "model_name", None)
        return chat

    @property
    def llm(self) -> Any:
        """The engine, loaded on first use; instances naming the same model share it."""
        if self._llm is None:
            with self._lock:
                if self._llm is None:
                    if self.base_url:
                        key = self.api_key.get_secret_value() if self.api_key else None
                        self._llm = _remote_llm(self.base_url, key, self.timeout, self.max_retries)
                    else:
                        self._llm = budgetllm.get_llm(self.model, backend=self.backend, device=self.device, dtype=self.dtype)
        return self._llm

    def _policy(self, value: Any) -> Any:
        """A policy object as is; a policy file path loaded (once, for the instance's own)."""
        if value is None or (not isinstance(value, str) and not hasattr(value, "__fspath__")):
            return value
        loader = getattr(budgetllm, "load_policy", None)
        if loader is None:
            raise ImportError("policy: policy files need budgetllm.load_policy, which this budgetllm does not export")
        if value is self.policy:
            if self._policy_obj is None:
                self._policy_obj = loader(value)
            return self._policy_obj
        return loader(value)

    @property
    def _llm_type(self) -> str:
        return "chat-dms"

    @property
    def model_name(self) -> str:
        if self._llm is not None:
            return getattr(self._llm, "model_name", None) or self.model or DEFAULT_MODEL_NAME
        return self.model or DEFAULT_MODEL_NAME

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "compression": self.compression,
            "thinking_budget": self.thinking_budget,
            "reasoning_effort": self.reasoning_effort,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "backend": self.backend,
            "base_url": self.base_url,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop or kwargs.get("stop") or self.stop
        if stop:
            params["ls_stop"] = stop
        return params

    def _resolve_model_profile(self) -> dict[str, Any] | None:
        static = {
            "text_inputs": True,
            "text_outputs": True,
            "reasoning_output": True,
            "tool_calling": True,
            "tool_choice": True,  # a grammar forces the call (budgetllm.constrain)
            "tool_call_streaming": True,
            "structured_output": True,  # response_format json_schema / json_object, constrained
        }
        if self.max_tokens:
            static["max_output_tokens"] = self.max_tokens

        def context() -> int | None:
            try:
                return getattr(self.llm, "max_context", None)
            except Exception:
                return None

        return _LazyProfile(static, context)  # type: ignore[return-value]

    # -- per-call options ----------------------------------------------------------------------

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The engine options of one call: per-call kwargs, else explicitly set fields."""
        opts: dict[str, Any] = {}
        explicit = self.model_fields_set  # unset fields leave the choice to the engine's policy
        for name in _FIELD_OPTIONS:
            if name in kwargs:
                value = kwargs[name]
            else:
                value = getattr(self, name) if name in explicit else None
            value = _check_option(name, value)
            if value is not None:
                opts[name] = value
        for name in _CALL_ONLY_OPTIONS:
            if kwargs.get(name) is not None:
                opts[name] = kwargs[name]
        policy = self._policy(opts.get("policy", self.policy))
        if policy is not None:
            opts["policy"] = policy
        stop = stop if stop is not None else kwargs.get("stop", self.stop)
        if stop:
            opts["stop"] = list(stop)
        if opts.get("tool_choice") in ("none", False) or not opts.get("tools"):
            opts.pop("tools", None)
            opts.pop("tool_choice", None)
        return opts

    # -- generation ----------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        opts = self._options(stop, kwargs)
        msgs = convert_messages(messages)
        llm = self.llm
        builder = _ChunkBuilder(self.model_name, kwargs.get("budget_plan"))
        events = llm.stream(msgs, **opts)
        try:
            for event in events:
                yield from builder.on_event(event)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # cancels the request if the caller stopped early

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        opts = self._options(stop, kwargs)
        msgs = convert_messages(messages)
        llm = self.llm
        builder = _ChunkBuilder(self.model_name, kwargs.get("budget_plan"))
        events = llm.astream(msgs, **opts)
        try:
            async for event in events:
                for chunk in builder.on_event(event):
                    yield chunk
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        opts = self._options(stop, kwargs)
        msgs = convert_messages(messages)
        builder = _ChunkBuilder(self.model_name, kwargs.get("budget_plan"))
        chunks = [c for e in self.llm.stream(msgs, **opts) for c in builder.on_event(e)]
        return self._result(chunks, builder)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        opts = self._options(stop, kwargs)
        msgs = convert_messages(messages)
        builder = _ChunkBuilder(self.model_name, kwargs.get("budget_plan"))
        chunks = []
        async for event in self.llm.astream(msgs, **opts):
            chunks.extend(builder.on_event(event))
        return self._result(chunks, builder)

    @staticmethod
    def _result(chunks: list[ChatGenerationChunk], builder: _ChunkBuilder) -> ChatResult:
        if not chunks:
            chunks = [ChatGenerationChunk(message=AIMessageChunk(content=""))]
        message = _message_from_chunks(chunks, builder.generation)
        return ChatResult(generations=[ChatGeneration(message=message)])

    # -- tools and tokens ----------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | Literal["auto", "any", "none", "required"] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Bind tools (rendered through the model's chat template) and any extra call options.

        ``tool_choice`` is passed to the engine; a small model may still answer without a call
        ("any"/"required"/a name are requests, not guarantees, unless the engine forces them).
        ``"none"`` leaves the tools out of the prompt.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is True:
            tool_choice = "any"
        if tool_choice is not None and tool_choice is not False:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(self, schema: Any = None, *, include_raw: bool = False,
                               method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
                               **kwargs: Any) -> Runnable[Any, Any]:
        """Answers that parse into ``schema`` (pydantic class, TypedDict, JSON schema or tool), kept
        to it by constrained decoding. ``method``: "json_schema" (default; response_format),
        "function_calling" (a forced tool call) or "json_mode" (any JSON object). With
        ``include_raw`` the result is ``{"raw", "parsed", "parsing_error"}``."""
        from langchain_budgetllm.structured import structured_output

        return structured_output(self, schema, method=method, include_raw=include_raw, **kwargs)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[dict[str, Any] | type | Callable | BaseTool] | None = None
    ) -> int:
        """Prompt tokens of ``messages`` (and ``tools``) through the model's chat template."""
        formatted = [convert_to_openai_tool(t) for t in tools] if tools else None
        return int(self.llm.count_tokens(convert_messages(convert_to_messages(messages)), tools=formatted))

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the model's tokenizer (a remote engine has none: see get_num_tokens)."""
        tokenizer = getattr(self.llm, "tokenizer", None)
        if tokenizer is None:
            raise NotImplementedError("the tokenizer is on the server; use get_num_tokens / get_num_tokens_from_messages")
        return list(tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        tokenizer = getattr(self.llm, "tokenizer", None)
        if tokenizer is not None:
            return len(tokenizer.encode(text, add_special_tokens=False))
        # Remote: the text as one user turn, less the template's overhead.
        full = self.llm.count_tokens([{"role": "user", "content": text}])
        return max(0, int(full) - int(self.llm.count_tokens([{"role": "user", "content": ""}])))
