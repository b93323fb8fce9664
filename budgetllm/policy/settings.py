"""Partial plan settings, layered with reasons, and the one place that turns them into a Plan.

Every policy resolves a stack of layers (built-in defaults, file defaults, effort, tier, tool,
step, the caller) into ``PlanSettings`` plus, per field, the layer that set it. ``build_plan``
turns them into the policy's proposal; the token limits no layer may break (the caller's
max_tokens, the model's context, the agent's tokens left) are applied once, afterwards, by
``budgetllm.policy.fit``. The two helpers below are the token arithmetic that fit and the memory
cap share: ``fit_tokens`` lowers max_tokens with the thinking budget giving way before the answer
reserve ("thinking eats max_tokens -> empty answer" is the failure it prevents), ``normalized``
raises a default max_tokens to hold budget + reserve.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from budgetllm.policy.base import CallContext, Plan

DEFAULT_ANSWER_RESERVE = 256
# Majority vote over identical greedy samples is pointless; width > 1 needs sampling.
VOTING_TEMPERATURE = 0.7
REQUESTED = "requested by the caller"


@dataclass(frozen=True)
class PlanSettings:
    """Any subset of a plan's fields; ``None`` means "this layer does not say"."""

    thinking_budget: int | None = None
    answer_reserve: int | None = None
    max_tokens: int | None = None
    compression: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    width: int | None = None
    effort: str | None = None

    def set_fields(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


class Layers:
    """Settings merged layer by layer, remembering which layer set each field."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.reasons: dict[str, str] = {}

    def apply(self, settings: PlanSettings, why: str) -> None:
        for name, value in settings.set_fields().items():
            if name == "effort":
                continue  # the effort level is expanded by the caller of apply, not stored
            self.values[name] = value
            self.reasons[name] = why

    def get(self, name: str, default: object = None) -> object:
        return self.values.get(name, default)


def note(reasons: dict[str, str], name: str, text: str) -> dict[str, str]:
    """A copy of ``reasons`` with ``text`` appended to the reason of ``name`` (stages add, never erase)."""
    out = dict(reasons)
    out[name] = f"{out[name]}; {text}" if out.get(name) else text
    return out


def fit_tokens(plan: Plan, ceiling: int, why: str) -> Plan:
    """Lower ``max_tokens`` to ``ceiling``; the thinking budget gives way before the answer reserve."""
    ceiling = max(int(ceiling), 0)
    reasons = dict(plan.reasons)
    max_tokens = plan.max_tokens
    if max_tokens > ceiling:
        reasons = note(reasons, "max_tokens", f"lowered from {max_tokens} to {ceiling} ({why})")
        max_tokens = ceiling
    reserve = plan.answer_reserve
    if reserve > max_tokens:
        reasons = note(reasons, "answer_reserve", f"lowered from {reserve} to {max_tokens} to fit max_tokens")
        reserve = max_tokens
    budget = plan.thinking_budget
    if budget and budget + reserve > max_tokens:
        new_budget = max(max_tokens - reserve, 0)
        reasons = note(
            reasons,
            "thinking_budget",
            f"lowered from {budget} to {new_budget} so the answer keeps {reserve} tokens",
        )
        budget = new_budget
    return replace(
        plan, max_tokens=max_tokens, answer_reserve=reserve, thinking_budget=budget, reasons=reasons
    )


def normalized(plan: Plan, up_to: int | None = None) -> Plan:
    """A plan from any policy made consistent: ``max_tokens >= thinking_budget + answer_reserve``.

    A base policy may hand over a budget larger than its max_tokens (e.g. ``FixedPolicy(
    thinking_budget=4096)`` with its default max_tokens); the budget is the intent, so max_tokens
    grows, but not above ``up_to`` (the call's lowest ceiling, when the fit knows it). The
    ceilings themselves (caller, context, agent) are applied by ``policy.fit.fit_plan``.
    """
    reserve = max(plan.answer_reserve, 0)
    need = (plan.thinking_budget or 0) + reserve
    if up_to is not None:
        need = min(need, max(up_to, plan.max_tokens))
    if plan.max_tokens >= need and reserve == plan.answer_reserve:
        return plan
    reasons = plan.reasons
    if need > plan.max_tokens:
        why = f"raised from {plan.max_tokens} to {need} to hold thinking budget + answer reserve"
        reasons = note(reasons, "max_tokens", why)
    return replace(plan, answer_reserve=reserve, max_tokens=max(plan.max_tokens, need), reasons=reasons)


def build_plan(context: CallContext, layers: Layers, policy: str) -> Plan:
    """Turn resolved layers into a Plan that keeps every token invariant (see the module docstring)."""
    model = context.model
    reasons = dict(layers.reasons)
    budget = layers.get("thinking_budget")
    reserve = int(layers.get("answer_reserve", DEFAULT_ANSWER_RESERVE))
    reasons.setdefault("answer_reserve", "built-in default")
    compression = layers.get("compression")
    if compression is None:
        compression = model.native_compression if model.native_compression > 1 else 1.0
        reasons["compression"] = (
            "the model's native DMS ratio" if compression > 1 else "dense (no compression set)"
        )
    compression = max(float(compression), 1.0)
    if not model.supports_compression and compression != 1.0:
        reasons = note(reasons, "compression", "model has no DMS: the engine uses sliding-window mode")
    width = max(int(layers.get("width", 1)), 1)
    reasons.setdefault("width", "one sample")
    max_tokens = layers.get("max_tokens")
    if max_tokens is None:
        max_tokens = (budget or 0) + reserve
        reasons["max_tokens"] = "thinking budget + answer reserve"
    temperature = layers.get("temperature")
    if width > 1 and not temperature and "temperature" not in reasons:
        temperature = VOTING_TEMPERATURE
        reasons["temperature"] = f"{VOTING_TEMPERATURE}: voting over {width} samples needs sampling"
    plan = Plan(
        thinking_budget=None if budget is None else int(budget),
        answer_reserve=reserve,
        compression=compression,
        max_tokens=int(max_tokens),
        temperature=None if temperature is None else float(temperature),
        top_p=layers.get("top_p"),
        width=width,
        reasons=reasons,
        policy=policy,
    )
    return plan
