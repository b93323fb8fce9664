"""Pydantic models of the HTTP edge: what a request may hold, checked before the engine sees it.

Unknown fields are ignored (OpenAI clients send fields such as ``user`` or ``parallel_tool_calls``
that change nothing here); known fields with a wrong type or range are a 400 with the field named.
The budgetllm extras (``thinking_budget``, ``compression``, ``policy_tier``, ...) sit next to the
OpenAI fields, where ``openai``'s ``extra_body`` and LangChain's ``model_kwargs`` put them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from budgetllm.options import EFFORT_LEVELS, MAX_STOP_CHARS, MAX_STOP_STRINGS, pydantic_bounds

ReasoningEffort = Literal[EFFORT_LEVELS]  # type: ignore[valid-type]  (the levels of budgetllm.options)


def _opt(name: str, **extra: Any) -> Any:
    """A field with the bounds of the per-call option ``name`` (budgetllm.options.CallOptions)."""
    return Field(default=None, **pydantic_bounds(name), **extra)


class _Edge(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Edge):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Edge):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Edge):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # str, or a list of content parts ({"type": "text", "text": ...}); None for tool-call turns.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_result_names_its_call(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs tool_call_id (the id of the call it answers)")
        return self

    def to_engine(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        # Small models' chat templates know "system" but not OpenAI's newer "developer" role.
        if d["role"] == "developer":
            d["role"] = "system"
        return d


class FunctionDef(_Edge):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Edge):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Edge):
    include_usage: bool = False


class AgentBudgetIn(_Edge):
    tokens_left: int | None = Field(default=None, ge=0, le=2**62, strict=True)
    kv_byte_seconds_left: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    calls_left: int | None = Field(default=None, ge=0, le=2**62, strict=True)
    step: int = Field(default=0, ge=0, le=2**62, strict=True)
    max_tokens_when_spent: int | None = Field(default=None, ge=0, le=2**62, strict=True)  # BudgetMiddleware's exit_behavior="continue"


class ChatCompletionRequest(_Edge):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = _opt("max_tokens")
    max_completion_tokens: int | None = _opt("max_tokens")  # OpenAI's newer name
    temperature: float | None = _opt("temperature")
    top_p: float | None = _opt("top_p")
    top_k: int | None = _opt("top_k")
    seed: int | None = _opt("seed")
    stop: str | list[str] | None = None
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, strict=True)
    logprobs: bool | None = None  # refused when true: budgetllm returns no log-probabilities
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    # budgetllm extras
    reasoning_effort: ReasoningEffort | None = None
    thinking_budget: int | None = _opt("thinking_budget")
    answer_reserve: int | None = _opt("answer_reserve")
    compression: float | None = _opt("compression")  # 1 = dense (no eviction)
    policy_tier: str | None = Field(default=None, min_length=1)
    agent_budget: AgentBudgetIn | None = None
    tool_name: str | None = None
    return_token_ids: bool = Field(default=False, strict=True)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported (one choice per request); send several requests instead")
        return v

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, v: Any) -> Any:
        if v:  # false / 0 / null ask for nothing and are accepted
            raise ValueError("log-probabilities are not supported by this server; leave logprobs unset")
        return v

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        from budgetllm.constrain import parse_response_format

        parse_response_format(v)  # text, json_schema, json_object (+ regex, grammar); schema errors name their path
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        v = [v] if isinstance(v, str) else v
        if len(v) > MAX_STOP_STRINGS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in v):
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings of at most "
                             f"{MAX_STOP_CHARS} characters")
        return v

    def engine_messages(self) -> list[dict[str, Any]]:
        return [m.to_engine() for m in self.messages]

    def engine_options(self) -> dict[str, Any]:
        """The LLM.generate keyword arguments this request asks for (unset fields left out)."""
        opts: dict[str, Any] = {}
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        for key, value in (
            ("max_tokens", max_tokens),
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("top_k", self.top_k),
            ("seed", self.seed),
            ("stop", self.stop),
            ("reasoning_effort", self.reasoning_effort),
            ("thinking_budget", self.thinking_budget),
            ("answer_reserve", self.answer_reserve),
            ("compression", self.compression),
            ("policy_tier", self.policy_tier),
            ("tool_name", self.tool_name),
            ("tool_choice", self.tool_choice),
            ("response_format", self.response_format),
        ):
            if value is not None:
                opts[key] = value
        if self.tools:
            opts["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
        if self.agent_budget is not None:
            from budgetllm.policy.base import AgentBudget

            opts["agent_budget"] = AgentBudget(**self.agent_budget.model_dump())
        return opts


class TokenizeRequest(_Edge):
    """The ``/v1/tokenize`` extra: how many prompt tokens these messages (and tools) make."""

    model: str | None = None
    messages: list[Message] | str = Field(min_length=1)
    tools: list[Tool] | None = None


_TYPE_NAMES = {"str", "int", "float", "bool", "none"}
_TYPE_PREFIXES = ("list[", "dict[", "function-", "literal[")


def _is_type_tag(x: object) -> bool:
    return isinstance(x, str) and (x.lower() in _TYPE_NAMES or x.lower().startswith(_TYPE_PREFIXES))


def _field_path(loc: tuple) -> str:
    # pydantic adds the union member it tried ("str", "list[dict[str,any]]") to the location.
    return ".".join(str(x) for x in loc if not _is_type_tag(x))


def describe_validation_error(err: ValidationError) -> tuple[str, str | None]:
    """A readable message naming each bad field, and the first field's dotted path (for ``param``)."""
    by_field: dict[str, list[str]] = {}
    for e in err.errors():
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ") + shown
        msgs = by_field.setdefault(_field_path(e["loc"]) or "body", [])
        if msg not in msgs:
            msgs.append(msg)
    parts = [f"{field}: {' or '.join(msgs)}" for field, msgs in list(by_field.items())[:5]]
    if len(by_field) > 5:
        parts.append(f"... and {len(by_field) - 5} more fields")
    first = next(iter(by_field), None)
    return "; ".join(parts), (None if first == "body" else first)
