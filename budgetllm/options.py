"""Per-call options: THE list of per-call fields, their bounds and the effort levels.

``CallOptions`` is the one contract for what a call may ask: ``LLM.generate``/``stream`` parse
their keyword arguments with it, the HTTP server's request schema takes its bounds from
:func:`pydantic_bounds`, the ``budgetllm generate`` flags and the policy's ``RequestedLimits`` are
checked against it by tests (tests/test_options_contract.py), and LangChain's ChatDMS derives its
fields from :meth:`CallOptions.field_names`. Torch-free.

Every error is an ``InvalidRequestError`` whose ``field`` names the option. The call's eviction rule is
built once, by ``budgetllm.engine.eviction.EvictionRule.for_call``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from budgetllm.errors import InvalidRequestError

EFFORT_LEVELS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh")
MAX_TOKEN_COUNT = 2**31 - 1  # token counts and budgets stay in int32 on the device
SEED_MAX = 2**63 - 1  # torch generators take a 64-bit seed; negative seeds are refused
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024  # a stop string costs O(its length) when it starts to match: keep it bounded
TOOL_CHOICE_MODES = ("none", "auto", "required", "any")
_EFFORTS = EFFORT_LEVELS  # old private name, kept for importers


@dataclass(frozen=True)
class Bound:
    """What one option accepts. ``kind``: int, float, effort, stop, tools, tool_choice, policy,
    tier, agent_budget, str."""

    kind: str
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    doc: str = ""


def _opt(kind: str, default: Any = None, doc: str = "", **bounds: Any) -> Any:
    return field(default=default, metadata={"bound": Bound(kind, doc=doc, **bounds)})


@dataclass
class CallOptions:
    max_tokens: int | None = _opt("int", ge=1, le=MAX_TOKEN_COUNT, doc="most tokens generated (thinking included)")
    thinking_budget: int | None = _opt("int", ge=0, le=MAX_TOKEN_COUNT, doc="most reasoning tokens")
    answer_reserve: int | None = _opt("int", ge=0, le=MAX_TOKEN_COUNT, doc="tokens kept for the answer")
    compression: float | None = _opt("float", ge=1.0, doc="KV compression ratio (1 = dense)")
    reasoning_effort: str | None = _opt("effort", doc="one of EFFORT_LEVELS")
    temperature: float = _opt("float", 0.0, ge=0.0, le=2.0, doc="0 = greedy")
    top_p: float = _opt("float", 1.0, gt=0.0, le=1.0, doc="nucleus sampling mass")
    top_k: int = _opt("int", 0, ge=0, le=MAX_TOKEN_COUNT, doc="0 = off")
    seed: int | None = _opt("int", ge=0, le=SEED_MAX, doc="sampling seed")
    stop: list[str] | None = _opt("stop", doc=f"at most {MAX_STOP_STRINGS} strings of 1..{MAX_STOP_CHARS} chars")
    tools: list[dict] | None = _opt("tools", doc="OpenAI-style tool definitions")
    tool_choice: Any = _opt("tool_choice", doc="none, auto, required/any, or a tool's name")
    response_format: dict | None = _opt("response_format", doc="json_schema / json_object / regex / grammar (budgetllm.constrain)")
    policy: Any = _opt("policy", doc="a BudgetPolicy for this call")
    policy_tier: str | None = _opt("tier", doc="a tier of the (tiered) policy")
    agent_budget: Any = _opt("agent_budget", doc="an AgentBudget (what the agent has left)")
    tool_name: str | None = _opt("str", doc="the tool this call serves (for per-tool policy rules)")
    temperature_requested: float | None = None
    top_p_requested: float | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The per-call options a caller may pass, in declaration order."""
        return tuple(f.name for f in fields(cls) if "bound" in f.metadata)

    @classmethod
    def bounds(cls) -> dict[str, Bound]:
        return {f.name: f.metadata["bound"] for f in fields(cls) if "bound" in f.metadata}

    @classmethod
    def parse(cls, opts: dict[str, Any]) -> CallOptions:
        known = cls.field_names()
        unknown = sorted(set(opts) - set(known))
        if unknown:
            raise InvalidRequestError(unknown[0], f"unknown option; known options: {', '.join(sorted(known))}")
        opts = {k: v for k, v in opts.items() if v is not None}
        call = cls(**opts)
        call.temperature_requested = opts.get("temperature")
        call.top_p_requested = opts.get("top_p")
        call.validate()
        return call

    def validate(self) -> None:
        for name, bound in self.bounds().items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _check(name, bound, value))
        _check_tool_choice(self.tool_choice, self.tools)
        if self.policy is not None:
            check_policy_tier(self.policy, self.policy_tier)


def validate_options(**opts: Any) -> CallOptions:
    """Check per-call options as ``LLM.generate`` does: raises InvalidRequestError naming the field."""
    return CallOptions.parse(opts)


def check_option(name: str, value: Any) -> Any:
    """One option checked against its bound (the normalised value: a stop string becomes a list)."""
    bound = CallOptions.bounds().get(name)
    if bound is None:
        raise InvalidRequestError(name, f"unknown option; known options: {', '.join(CallOptions.field_names())}")
    return None if value is None else _check(name, bound, value)


def policy_has_tiers(policy: Any, _depth: int = 0) -> bool:
    """Whether ``policy`` (or a policy it wraps) has named tiers that ``policy_tier`` can pick."""
    if policy is None or _depth > 8:
        return False
    if getattr(policy, "tiers", None):
        return True
    inner = [getattr(policy, a, None) for a in ("base", "policy", "inner", "chain")]
    inner += list(getattr(policy, "stages", None) or [])
    return any(policy_has_tiers(p, _depth + 1) for p in inner if p is not None and p is not policy)


def check_policy_tier(policy: Any, tier: str | None) -> None:
    """A ``policy_tier`` needs a policy with tiers: otherwise it would be silently ignored."""
    if tier is not None and not policy_has_tiers(policy):
        raise InvalidRequestError("policy_tier", f"{tier!r} names a tier, but the policy {type(policy).__name__} "
                                  "has no tiers; serve or pass a tiered policy file (budgetllm.load_policy)")


def pydantic_bounds(name: str) -> dict[str, Any]:
    """``pydantic.Field`` keyword arguments for one numeric option (the server's schema uses them)."""
    b = CallOptions.bounds()[name]
    out: dict[str, Any] = {k: v for k, v in (("ge", b.ge), ("le", b.le), ("gt", b.gt)) if v is not None}
    if b.kind in ("int", "float"):
        out["strict"] = True  # "8" is not 8: a wrong type is a 400, not a guess
    if b.kind == "float":
        out["allow_inf_nan"] = False
    return out


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(b: Bound) -> str:
    lo = f">= {_fmt(b.ge)}" if b.ge is not None else (f"> {_fmt(b.gt)}" if b.gt is not None else "")
    hi = f"<= {_fmt(b.le)}" if b.le is not None else ""
    return " and ".join(x for x in (lo, hi) if x)


def _check(name: str, b: Bound, value: Any) -> Any:
    if b.kind in ("int", "float"):
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_num = is_int or (isinstance(value, float) and b.kind == "float")
        what = "an integer" if b.kind == "int" else "a number"
        if not is_num or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidRequestError(name, f"must be {what} {_range_text(b)}, got {value!r}")
        if ((b.ge is not None and value < b.ge) or (b.gt is not None and value <= b.gt)
                or (b.le is not None and value > b.le)):
            shown = value if not is_int or abs(value) < 10**30 else f"an integer of {len(str(value))} digits"
            raise InvalidRequestError(name, f"must be {what} {_range_text(b)}, got {shown!r}")
        return value
    if b.kind == "effort":
        if value not in EFFORT_LEVELS:
            raise InvalidRequestError(name, f"must be one of {', '.join(EFFORT_LEVELS)}, got {value!r}")
        return value
    if b.kind == "stop":
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequestError(name, f"must be a string or a list of strings, got {type(value).__name__}")
        if len(stops) > MAX_STOP_STRINGS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise InvalidRequestError(name, f"takes at most {MAX_STOP_STRINGS} non-empty strings of at most "
                                      f"{MAX_STOP_CHARS} characters")
        return list(stops)
    if b.kind == "tools":
        if not isinstance(value, (list, tuple)) or not all(isinstance(t, dict) for t in value):
            raise InvalidRequestError(name, "must be a list of tool definitions (dicts such as "
                                      "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}})")
        if any(not _tool_name(t) for t in value):
            raise InvalidRequestError(name, "every tool needs a non-empty function name")
        return list(value)
    if b.kind == "policy":
        if not callable(getattr(value, "plan", None)):
            hint = "; load a file with budgetllm.load_policy(path)" if isinstance(value, str) else ""
            raise InvalidRequestError(name, f"must be a BudgetPolicy (with a plan method), got "
                                      f"{type(value).__name__}{hint}")
        return value
    if b.kind == "agent_budget":
        from budgetllm.policy.base import AgentBudget

        if not isinstance(value, AgentBudget):
            raise InvalidRequestError(name, f"must be a budgetllm.AgentBudget, got {type(value).__name__}")
        return value
    if b.kind == "response_format":
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise InvalidRequestError(name, "must be a dict with a 'type' (json_schema, json_object, regex or grammar)")
        return value  # its schema is checked where it compiles (budgetllm.constrain)
    if b.kind in ("tier", "str"):
        if not isinstance(value, str) or not value:
            raise InvalidRequestError(name, f"must be a non-empty string, got {value!r}")
        return value
    return value  # tool_choice: checked with the tools (_check_tool_choice)


def _tool_name(tool: dict) -> str | None:
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = fn.get("name")
    return name if isinstance(name, str) and name else None


def _check_tool_choice(choice: Any, tools: list[dict] | None) -> None:
    if choice is None or choice in ("none", "auto", False):
        return
    names = [_tool_name(t) for t in tools or []]
    if choice in ("required", "any", True):
        if not names:
            raise InvalidRequestError("tool_choice", f"{choice!r} forces a tool call, but no tools were given")
        return
    if isinstance(choice, dict):
        fn = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        choice = fn.get("name")
    if not isinstance(choice, str) or not choice:
        raise InvalidRequestError("tool_choice", f"must be one of {', '.join(TOOL_CHOICE_MODES)}, a tool's name "
                                  "or {'type': 'function', 'function': {'name': ...}}")
    if choice not in names:
        known = ", ".join(n for n in names if n) or "none were given"
        raise InvalidRequestError("tool_choice", f"names the tool {choice!r}, which is not among the tools ({known})")


def validate_messages(messages: Any) -> None:
    """A prompt string, or a list of {"role", "content"} dicts (OpenAI's chat format)."""
    if isinstance(messages, str):
        return
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidRequestError("messages", f"must be a string or a non-empty list of message dicts, got "
                                  f"{type(messages).__name__ if not isinstance(messages, (list, tuple)) else 'an empty list'}")
    roles = ("system", "developer", "user", "assistant", "tool")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequestError(f"messages[{i}]", f"must be a dict with 'role' and 'content', got "
                                      f"{type(m).__name__}")
        if m.get("role") not in roles:
            raise InvalidRequestError(f"messages[{i}].role", f"must be one of {', '.join(roles)}, got "
                                      f"{m.get('role')!r}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(f"messages[{i}].content", f"must be a string or a list of content parts, "
                                      f"got {type(content).__name__}")
        calls = m.get("tool_calls")
        if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
            raise InvalidRequestError(f"messages[{i}].tool_calls", "must be a list of tool-call dicts")

