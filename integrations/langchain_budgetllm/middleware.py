"""BudgetMiddleware: per model call of an agent, a budget policy picks the thinking budget,
compression and token cap from the agent's state (step, tokens and KV memory spent so far, an
agent-level budget). The middleware hands that state (and its policy) to the engine, which plans
the call once; it does not plan itself.

The pattern is LangChain's: ``wrap_model_call`` sets ``model_settings`` through
``request.override`` (as AnthropicPromptCachingMiddleware does), counters live in agent state as
private, per-run attributes (as ModelCallLimitMiddleware keeps its counts), and ``after_model``
adds the last AIMessage's usage to them. The engine's plan comes back in that message's
``response_metadata["budget_plan"]``, to which the middleware adds the step and budget it passed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any, Literal, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse, hook_config
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langgraph.channels.untracked_value import UntrackedValue

import budgetllm
from budgetllm import AgentBudget
from langchain_budgetllm.chat_models import ChatDMS


class BudgetState(AgentState):
    """Private per-run counters of BudgetMiddleware (not part of the agent's input or output)."""

    budget_steps: NotRequired[Annotated[int, UntrackedValue, PrivateStateAttr]]
    budget_output_tokens: NotRequired[Annotated[int, UntrackedValue, PrivateStateAttr]]
    budget_input_tokens: NotRequired[Annotated[int, UntrackedValue, PrivateStateAttr]]
    budget_reasoning_tokens: NotRequired[Annotated[int, UntrackedValue, PrivateStateAttr]]
    budget_peak_kv_bytes: NotRequired[Annotated[int, UntrackedValue, PrivateStateAttr]]
    budget_kv_byte_seconds: NotRequired[Annotated[float, UntrackedValue, PrivateStateAttr]]
    budget_tool_call_retries: NotRequired[Annotated[int, UntrackedValue, PrivateStateAttr]]


class BudgetExhaustedError(RuntimeError):
    """The agent-level budget ran out and ``exit_behavior="error"``."""


def call_kv_byte_seconds(message: AIMessage) -> float:
    """Estimated integral of live KV bytes over one call's time, from its metadata.

    Decode: KV bytes read (the sum of live bytes over steps) times the seconds per step;
    prefill: the peak live bytes held for the prefill time.
    """
    meta = message.response_metadata or {}
    kv = meta.get("kv_memory") or {}
    timing = meta.get("timing") or {}
    usage = message.usage_metadata or {}
    steps = max(int(usage.get("output_tokens", 0) or 0), 1)
    decode = float(kv.get("kv_bytes_read", 0) or 0) * float(timing.get("decode_seconds", 0.0) or 0.0) / steps
    prefill = float(kv.get("peak_live_bytes", 0) or 0) * float(timing.get("prefill_seconds", 0.0) or 0.0)
    return decode + prefill


def _load_policy(policy: Any) -> Any:
    if policy is None or hasattr(policy, "plan"):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        loader = getattr(budgetllm, "load_policy", None)
        if loader is None:
            raise ImportError("policy files need budgetllm.load_policy, which this budgetllm does not export")
        return loader(policy)
    raise TypeError(f"policy: expected a BudgetPolicy (with .plan(context)) or a policy file path, got {type(policy).__name__}")


class BudgetMiddleware(AgentMiddleware[BudgetState]):
    """Sets each ChatDMS call's thinking budget, compression and max_tokens from a budget policy.

    Args:
        policy: any budgetllm ``BudgetPolicy`` (``plan(CallContext) -> Plan``) or a policy file
            path, handed to the engine with each call; None: the model's own policy. The engine
            plans once, with the agent's state in ``CallContext.agent``; a remote engine cannot
            take a policy object (start the server with ``--policy FILE`` and set ``policy_tier``).
        token_budget: generated tokens (reasoning included) the whole agent run may spend.
        kv_byte_seconds_budget: KV memory the run may hold over time (byte-seconds).
        max_calls: model calls the run may make.
        policy_tier: a named tier of the policy file.
        exit_behavior: when a budget is spent before a call: "end" stops the agent with an
            AIMessage saying so, "error" raises BudgetExhaustedError, "continue" makes the
            call with thinking off and ``min_max_tokens`` as its token cap.
        min_max_tokens: the token cap of calls made after the budget is spent ("continue").
        invalid_tool_call_retries: when a call returns only malformed tool calls, answer each
            with an error ToolMessage and call the model again, at most this many times per run
            (create_agent alone would end the run there).
        unsupported_model_behavior: when the agent's model is not a ChatDMS: "ignore", "warn"
            (default) or "raise".

    Example:
        .. code-block:: python

            agent = create_agent(ChatDMS(), tools=[...], middleware=[BudgetMiddleware(token_budget=400)])
    """

    state_schema = BudgetState

    def __init__(
        self,
        policy: Any = None,
        *,
        token_budget: int | None = None,
        kv_byte_seconds_budget: float | None = None,
        max_calls: int | None = None,
        policy_tier: str | None = None,
        min_max_tokens: int = 16,
        invalid_tool_call_retries: int = 1,
        exit_behavior: Literal["end", "error", "continue"] = "end",
        unsupported_model_behavior: Literal["ignore", "warn", "raise"] = "warn",
    ) -> None:
        super().__init__()
        for name, value in (("token_budget", token_budget), ("max_calls", max_calls), ("min_max_tokens", min_max_tokens),
                            ("invalid_tool_call_retries", invalid_tool_call_retries)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if kv_byte_seconds_budget is not None and not kv_byte_seconds_budget >= 0:
            raise ValueError(f"kv_byte_seconds_budget: must be >= 0, got {kv_byte_seconds_budget!r}")
        if exit_behavior not in ("end", "error", "continue"):
            raise ValueError(f"exit_behavior: must be 'end', 'error' or 'continue', got {exit_behavior!r}")
        if unsupported_model_behavior not in ("ignore", "warn", "raise"):
            raise ValueError(
                f"unsupported_model_behavior: must be 'ignore', 'warn' or 'raise', got {unsupported_model_behavior!r}"
            )
        self.policy = _load_policy(policy)
        self.token_budget = token_budget
        self.kv_byte_seconds_budget = kv_byte_seconds_budget
        self.max_calls = max_calls
        self.policy_tier = policy_tier
        self.min_max_tokens = min_max_tokens
        self.invalid_tool_call_retries = invalid_tool_call_retries
        self.exit_behavior = exit_behavior
        self.unsupported_model_behavior = unsupported_model_behavior

    # -- the agent budget ----------------------------------------------------------------------

    def agent_budget(self, state: dict[str, Any]) -> AgentBudget:
        """What the run has left, from the counters in ``state``."""
        steps = state.get("budget_steps", 0)
        tokens_left = None if self.token_budget is None else self.token_budget - state.get("budget_output_tokens", 0)
        kv_left = None
        if self.kv_byte_seconds_budget is not None:
            kv_left = self.kv_byte_seconds_budget - state.get("budget_kv_byte_seconds", 0.0)
        calls_left = None if self.max_calls is None else self.max_calls - steps
        # exit_behavior "continue": the policy layer's fit turns thinking off and caps the call.
        when_spent = self.min_max_tokens if self.exit_behavior == "continue" else None
        return AgentBudget(tokens_left=tokens_left, kv_byte_seconds_left=kv_left, calls_left=calls_left, step=steps,
                           max_tokens_when_spent=when_spent)

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: BudgetState, runtime: Any) -> dict[str, Any] | None:
        spent = self.agent_budget(state).spent()
        if not spent or self.exit_behavior == "continue":
            return None
        msg = f"Agent budget exhausted ({', '.join(spent)}) after {state.get('budget_steps', 0)} model calls."
        if self.exit_behavior == "error":
            raise BudgetExhaustedError(msg)
        return {"jump_to": "end", "messages": [AIMessage(content=msg, response_metadata={"budget_exhausted": spent})]}

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: BudgetState, runtime: Any) -> dict[str, Any] | None:
        return self.before_model(state, runtime)

    @hook_config(can_jump_to=["model"])
    def after_model(self, state: BudgetState, runtime: Any) -> dict[str, Any] | None:
        last = next((m for m in reversed(state.get("messages", [])) if isinstance(m, AIMessage)), None)
        update: dict[str, Any] = {"budget_steps": state.get("budget_steps", 0) + 1}
        retries = state.get("budget_tool_call_retries", 0)
        if (
            last is not None
            and last.invalid_tool_calls
            and not last.tool_calls
            and retries < self.invalid_tool_call_retries
        ):
            update["budget_tool_call_retries"] = retries + 1
            update["messages"] = [
                ToolMessage(
                    content=(
                        f"Tool call {c.get('name') or '(unnamed)'} with id {c['id']} could not be executed - "
                        f"arguments were malformed or truncated ({c.get('error') or 'invalid JSON'}). "
                        "Call the tool again with valid JSON arguments."
                    ),
                    tool_call_id=c["id"],
                    name=c.get("name") or "",
                    status="error",
                )
                for c in last.invalid_tool_calls
                if c.get("id")
            ]
            update["jump_to"] = "model"
        if last is not None and last.usage_metadata:
            usage = last.usage_metadata
            details = usage.get("output_token_details") or {}
            kv = (last.response_metadata or {}).get("kv_memory") or {}
            update["budget_output_tokens"] = state.get("budget_output_tokens", 0) + int(usage.get("output_tokens", 0))
            update["budget_input_tokens"] = state.get("budget_input_tokens", 0) + int(usage.get("input_tokens", 0))
            update["budget_reasoning_tokens"] = state.get("budget_reasoning_tokens", 0) + int(details.get("reasoning", 0) or 0)
            update["budget_peak_kv_bytes"] = max(state.get("budget_peak_kv_bytes", 0), int(kv.get("peak_live_bytes", 0) or 0))
            update["budget_kv_byte_seconds"] = state.get("budget_kv_byte_seconds", 0.0) + call_kv_byte_seconds(last)
        return update

    @hook_config(can_jump_to=["model"])
    async def aafter_model(self, state: BudgetState, runtime: Any) -> dict[str, Any] | None:
        return self.after_model(state, runtime)

    # -- per call ------------------------------------------------------------------------------

    def _applies(self, request: ModelRequest) -> bool:
        if isinstance(request.model, ChatDMS):
            return True
        msg = f"BudgetMiddleware only sets budgets on ChatDMS models; got {type(request.model).__name__}, left unchanged"
        if self.unsupported_model_behavior == "raise":
            raise ValueError(msg)
        if self.unsupported_model_behavior == "warn":
            warnings.warn(msg, stacklevel=3)
        return False

    def settings(self, request: ModelRequest) -> dict[str, Any]:
        """What this call adds to the model's settings: the agent's state (budget left, step, the
        tool whose result it answers, the tier) and the policy, when the middleware has one.

        The engine plans once, from these and the call's own settings (ChatDMS fields and
        ``model_settings`` are the caller's requests); the plan comes back on the AIMessage.
        """
        agent = self.agent_budget(request.state or {})
        out: dict[str, Any] = {"agent_budget": agent}
        if self.policy is not None:
            out["policy"] = self.policy
        if self.policy_tier is not None:
            out["policy_tier"] = self.policy_tier
        last = request.messages[-1] if request.messages else None
        if isinstance(last, ToolMessage) and last.name:
            out["tool_name"] = last.name
        return out

    def _annotate(self, result: Any, agent: AgentBudget) -> Any:
        """Add who set the call's agent state to the engine's plan in ``response_metadata["budget_plan"]``
        (one plan: the engine's; this adds ``source``, ``step`` and the ``agent_budget`` it saw)."""
        note = {
            "source": type(self).__name__,
            "step": agent.step,
            "agent_budget": {
                "tokens_left": agent.tokens_left,
                "kv_byte_seconds_left": agent.kv_byte_seconds_left,
                "calls_left": agent.calls_left,
            },
        }

        def mark(message: BaseMessage) -> BaseMessage:
            if not isinstance(message, AIMessage):
                return message
            meta = dict(message.response_metadata or {})
            meta["budget_plan"] = {**(meta.get("budget_plan") or {}), **note}
            return message.model_copy(update={"response_metadata": meta})

        if isinstance(result, AIMessage):
            return mark(result)
        if isinstance(result, ModelResponse):
            return ModelResponse(result=[mark(m) for m in result.result], structured_response=result.structured_response)
        inner = getattr(result, "model_response", None)  # ExtendedModelResponse
        if isinstance(inner, ModelResponse):
            return replace(result, model_response=self._annotate(inner, agent))
        return result

    def _request(self, request: ModelRequest) -> tuple[ModelRequest, AgentBudget]:
        settings = self.settings(request)
        return request.override(model_settings={**request.model_settings, **settings}), settings["agent_budget"]

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        if not self._applies(request):
            return handler(request)
        request, agent = self._request(request)
        return self._annotate(handler(request), agent)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        if not self._applies(request):
            return await handler(request)
        request, agent = self._request(request)
        return self._annotate(await handler(request), agent)
