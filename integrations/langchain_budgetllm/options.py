"""ChatDMS's per-call options: which fields travel to the engine, checked by budgetllm's CallOptions.

CallOptions (exported by ``budgetllm``) is the one list of per-call fields and their bounds; the names
here are the ones ChatDMS forwards (a test fails when the two drift apart), and every value is
checked by CallOptions itself, so a bound lives in one place.
"""

from __future__ import annotations

from typing import Any

from budgetllm import CallOptions

# Engine options ChatDMS forwards; each may be set on the instance and overridden per call.
FIELD_OPTIONS = ("compression", "thinking_budget", "reasoning_effort", "max_tokens", "answer_reserve",
                 "temperature", "top_p", "top_k", "seed", "policy_tier")
# Per-call only (from bind_tools, bind, middleware, or invoke kwargs).
CALL_ONLY_OPTIONS = ("tools", "tool_choice", "agent_budget", "tool_name", "policy", "response_format")


def check_option(name: str, value: Any) -> Any:
    """``value`` if CallOptions accepts it for ``name`` (None passes); else a ValueError naming the field."""
    if value is None:
        return None
    if isinstance(value, bool) and name in ("compression", "temperature", "top_p"):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    CallOptions.parse({name: value})  # InvalidRequestError is a ValueError that names the field
    return float(value) if name in ("compression", "temperature", "top_p") else value


def openai_tool_choice(choice: Any) -> Any:
    """LangChain's tool_choice in the OpenAI shape both engines (local and HTTP) take: "any"/True ->
    "required"; a tool name -> {"type": "function", "function": {"name": ...}}."""
    if choice in (True, "any"):
        return "required"
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": choice}}
    if isinstance(choice, dict) and "function" not in choice and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def call_options(fields: dict[str, Any], explicit: set[str], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> dict[str, Any]:
    """The engine options of one call: per-call kwargs, else the instance's explicitly set fields
    (unset fields leave the choice to the engine's policy)."""
    opts: dict[str, Any] = {}
    for name in FIELD_OPTIONS:
        value = kwargs[name] if name in kwargs else (fields[name] if name in explicit else None)
        value = check_option(name, value)
        if value is not None:
            opts[name] = value
    for name in CALL_ONLY_OPTIONS:
        if kwargs.get(name) is not None:
            opts[name] = kwargs[name]
    stop = stop if stop is not None else kwargs.get("stop", fields.get("stop"))
    if stop:
        opts["stop"] = list(stop)
    if opts.get("tool_choice") in ("none", False) or not opts.get("tools"):
        opts.pop("tools", None)
        opts.pop("tool_choice", None)
    elif "tool_choice" in opts:
        opts["tool_choice"] = openai_tool_choice(opts["tool_choice"])
    return opts
