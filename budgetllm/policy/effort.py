"""Effort levels: OpenAI-style ``reasoning_effort`` mapped to explicit budgets and compressions.

The built-in ladder borrows Gemini's OpenAI-compatible mapping (low/medium/high = 1K/8K/24K,
docs/notes/budget.md §2), rounded to powers of two, and pairs longer reasoning with stronger
compression: the DMS paper finds the Pareto-optimal points for long traces at CR4-CR8, while
short calls gain nothing (the 512-token window dominates their cache). Files may override any
level; budgets must never decrease from ``none`` to ``xhigh`` (checked on construction).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from budgetllm.errors import InvalidRequestError
from budgetllm.options import EFFORT_LEVELS  # defined once, with the per-call options
from budgetllm.policy.base import CallContext, Plan
from budgetllm.policy.settings import REQUESTED, Layers, PlanSettings, build_plan

DEFAULT_EFFORT_MAP: dict[str, PlanSettings] = {
    "none": PlanSettings(thinking_budget=0, compression=1.0),
    "minimal": PlanSettings(thinking_budget=256, compression=1.0),
    "low": PlanSettings(thinking_budget=1024, compression=2.0),
    "medium": PlanSettings(thinking_budget=4096, compression=4.0),
    "high": PlanSettings(thinking_budget=16384, compression=8.0),
    "xhigh": PlanSettings(thinking_budget=32768, compression=8.0),
}


def merged_effort_map(overrides: dict[str, PlanSettings] | None = None) -> dict[str, PlanSettings]:
    """The built-in ladder with each overridden level's set fields replaced."""
    merged = dict(DEFAULT_EFFORT_MAP)
    for level, settings in (overrides or {}).items():
        merged[level] = replace(merged[level], **settings.set_fields())
    return merged


def ladder_problem(levels: dict[str, PlanSettings]) -> tuple[str, str] | None:
    """(level, message) for the first level whose budget is below a lower level's, else None."""
    previous_level, previous_budget = None, -1
    for level in EFFORT_LEVELS:
        budget = levels[level].thinking_budget or 0
        if budget < previous_budget:
            return level, (
                f"thinking_budget {budget} is below effort '{previous_level}' ({previous_budget}); "
                "budgets must not decrease from none to xhigh"
            )
        previous_level, previous_budget = level, budget
    return None


def check_effort_name(name: str, field_name: str = "reasoning_effort") -> str:
    if name in EFFORT_LEVELS:
        return name
    close = difflib.get_close_matches(str(name), EFFORT_LEVELS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise InvalidRequestError(
        field_name, f"unknown effort '{name}'; {hint}use one of {', '.join(EFFORT_LEVELS)}"
    )


def caller_layer(context: CallContext) -> PlanSettings:
    """The caller's explicit values (they win over every file default; caps still apply later)."""
    req = context.requested
    return PlanSettings(
        thinking_budget=req.thinking_budget,
        compression=req.compression,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
    )


@dataclass
class EffortPolicy:
    """Maps the caller's ``reasoning_effort`` (else ``default_effort``) to a budget and compression.

    Precedence (low to high): ``defaults``, the effort level's settings, the caller's explicit
    thinking_budget / compression / max_tokens / temperature / top_p.
    """

    levels: dict[str, PlanSettings] = field(default_factory=dict)
    default_effort: str = "medium"
    defaults: PlanSettings = field(default_factory=PlanSettings)

    def __post_init__(self) -> None:
        unknown = set(self.levels) - set(EFFORT_LEVELS)
        if unknown:
            raise ValueError(f"unknown effort levels {sorted(unknown)}; use {', '.join(EFFORT_LEVELS)}")
        self.levels = merged_effort_map(self.levels)
        problem = ladder_problem(self.levels)
        if problem:
            raise ValueError(f"effort '{problem[0]}': {problem[1]}")
        check_effort_name(self.default_effort, "default_effort")

    def expand(self, layers: Layers, level: str, why: str) -> None:
        """Apply one effort level's settings to ``layers``, with ``why`` naming who chose it."""
        layers.apply(self.levels[level], f"effort '{level}' ({why})")

    def plan(self, context: CallContext) -> Plan:
        layers = Layers()
        layers.apply(self.defaults, "policy default")
        requested = context.requested.reasoning_effort
        if requested is not None:
            self.expand(layers, check_effort_name(requested), REQUESTED)
        else:
            self.expand(layers, self.default_effort, "the policy's default effort")
        layers.apply(caller_layer(context), REQUESTED)
        return build_plan(context, layers, "effort")
